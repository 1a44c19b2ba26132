"""The HTTP proxy DynamoDB's item calls take from the environment (docs/operations.md#http-proxies).

boto3's table administration honours ``HTTPS_PROXY``/``HTTP_PROXY``/
``ALL_PROXY`` and ``NO_PROXY`` (lower-case spellings first); the item path
takes the same proxy for the same URL, so both reach DynamoDB the same way.
geventhttpclient speaks to a proxy in plain HTTP only (``CONNECT`` for https
endpoints), so a proxy URL it cannot use is refused at start-up with a line
naming the variable, never echoing its value (it may carry a password).
Connection nodes are never reached through a proxy.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# The DynamoDB URL checked at start-up when no endpoint is configured (the
# real one depends on the region boto3 resolves later; only NO_PROXY cares).
AWS_DYNAMODB_URL = "https://dynamodb.amazonaws.com"


@dataclass(slots=True, frozen=True)
class Proxy:
    """A plain-HTTP forward proxy: ``CONNECT`` tunnels for https origins, absolute URIs for http ones."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None


class ProxyRefused(ValueError):
    """A proxy variable names a proxy the item path cannot use; the message names the variable."""


def proxy_for(url: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy for ``url``, as boto3 would pick it, or None; raises ``ProxyRefused``."""
    found = _proxy_variables(environ)
    parts = urlsplit(url)
    if not found or _bypassed(parts.netloc, found):
        return None
    for key in (parts.scheme, "all"):
        if key in found:
            variable, value = found[key]
            return _parse(variable, value)
    return None


def _proxy_variables(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{"https": ("HTTPS_PROXY", value), "no": ...}``: the lower-case spelling wins, as in urllib."""
    found: dict[str, tuple[str, str]] = {}
    for name in sorted(environ, key=lambda name: name == name.lower()):  # upper-case first
        value = environ[name]
        if value and name.lower().endswith("_proxy"):
            found[name.lower()[: -len("_proxy")]] = (name, value)
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)  # urllib's rule against CGI's HTTP_PROXY header (httpoxy)
    return found


def _bypassed(netloc: str, found: dict[str, tuple[str, str]]) -> bool:
    if "no" not in found:
        return False
    # the matching urllib.request.proxy_bypass (and so botocore) applies, on this mapping; typeshed omits it
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return bool(bypass(netloc, {"no": found["no"][1]}))


def _parse(variable: str, value: str) -> Proxy:
    """``[http://][user:password@]host[:port]``, as botocore reads it (no scheme: http)."""
    if "://" not in value:
        value = "http:" + value if value.startswith("//") else "http://" + value
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ProxyRefused(
            f"invalid environment variable {variable}: a {parts.scheme[:10]!r} proxy is not supported for "
            "DynamoDB item calls; use an http:// proxy (https endpoints go through a CONNECT tunnel), "
            "or list the endpoint in NO_PROXY"
        )
    try:
        port = parts.port or 80
    except ValueError:
        port = 0
    if not parts.hostname or not port:
        raise ProxyRefused(f"invalid environment variable {variable}: not a proxy URL (http://host:port)")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(parts.hostname, port, user, password)
