"""Real nginx running ``deploy/nginx.conf`` for tests, with a throwaway TLS certificate.

The deployment file is an http-context file (Debian's ``conf.d``). Tests
render its ``@NAME@`` placeholders and include the result, unchanged, from a
minimal main configuration that plays the role of ``/etc/nginx/nginx.conf``
with every path (pid, logs, temp files) inside the test's own directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.processes import ROOT, stop_process

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def find_nginx() -> str | None:
    """The nginx binary (Debian puts it in /usr/sbin, not always on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render(values: dict[str, str], template: str | None = None) -> str:
    """``deploy/nginx.conf`` with every ``@NAME@`` replaced; a forgotten one is an error."""
    text = NGINX_CONF.read_text() if template is None else template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    leftover = sorted(set(PLACEHOLDER.findall(directives)))
    if leftover:
        raise ValueError(f"placeholders without a value: {', '.join(leftover)}")
    return text


@dataclass(frozen=True)
class Certificate:
    """A private CA and a server certificate it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_certificate(directory: Path, hostname: str) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autopush test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificate(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return paths


class Nginx:
    """nginx in the foreground serving the rendered ``deploy/nginx.conf``."""

    def __init__(self, binary: str, directory: Path, site: str, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.site = site
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def _main_config(self) -> str:
        temp = self.directory / "temp"
        # The master runs as the test's user. As root it would hand its
        # workers to "nobody", who cannot enter pytest's private tmp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}worker_processes 1;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log {self.directory / 'access.log'};\n"
            f"    client_body_temp_path {temp / 'body'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"    include {self.directory / 'autopush.conf'};\n"
            "}\n"
        )

    def command(self, *extra: str) -> list[str]:
        return [
            self.binary, "-p", f"{self.directory}/", "-c", str(self.directory / "nginx.conf"),
            "-g", f"daemon off; pid {self.directory / 'nginx.pid'};", *extra,
        ]

    def start(self, timeout: float = 10.0) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "temp").mkdir(exist_ok=True)
        (self.directory / "autopush.conf").write_text(self.site)
        (self.directory / "nginx.conf").write_text(self._main_config())
        check = subprocess.run(self.command("-t"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        output = open(self.directory / "nginx.out", "wb")
        with output:
            self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nginx not listening on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in
                 (self.directory / "nginx.out", self.error_log) if p.exists()]
        return "\n".join(parts)[-4000:]


def site_values(port: int, server_name: str, certificate: Certificate,
                connection: str, endpoint: str) -> dict[str, str]:
    """Placeholder values for a listener on loopback ``port``."""
    return {
        "LISTEN": f"127.0.0.1:{port}",
        "SERVER_NAME": server_name,
        "TLS_CERTIFICATE": str(certificate.cert),
        "TLS_CERTIFICATE_KEY": str(certificate.key),
        "CONNECTION_UPSTREAM": connection,
        "ENDPOINT_UPSTREAM": endpoint,
    }

