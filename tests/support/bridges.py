"""Fake FCM and APNs servers wired into a node's settings, for tests that run the bridges end to end.

The names (FCM app, Firebase project, APNs channel) are the ones every
bridge test registers with, so the settings and the test's URLs agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.fake_apns import FakeApns, TestPki
from tests.support.fake_fcm import FakeFcm

FCM_APP, FCM_PROJECT = "fennec-app", "fennec-project"
APNS_CHANNEL = "firefox"
APNS_KEY_ID, APNS_TEAM_ID = "KEY1234567", "TEAM123456"


class FakeBridges(NamedTuple):
    """Both fakes, running; a tuple, so ``fcm, apns = fakes`` reads as it always did."""

    fcm: FakeFcm
    apns: FakeApns

    @classmethod
    def start(cls, pki_dir: Path) -> FakeBridges:
        return cls(FakeFcm(), FakeApns(TestPki(pki_dir)))

    def stop(self) -> None:
        self.fcm.stop()
        self.apns.stop()

    def node_settings(self, key_dir: Path) -> dict[str, str]:
        """``AUTOPUSH_*`` variables pointing an endpoint node's bridges at these fakes.

        The APNs signing key (a fresh P-256 key, as Apple issues) is written to
        ``key_dir``: the node reads it from a file, as in production.
        """
        key_file = write_apns_key(key_dir / "AuthKey.p8")
        credential = json.dumps(self.fcm.service_account())
        return {
            "AUTOPUSH_FCM_CREDENTIALS": json.dumps({FCM_APP: {"project_id": FCM_PROJECT, "credential": credential}}),
            "AUTOPUSH_FCM_BASE_URL": self.fcm.url,
            "AUTOPUSH_APNS_CHANNELS": json.dumps({APNS_CHANNEL: {
                "key": str(key_file), "key_id": APNS_KEY_ID, "team_id": APNS_TEAM_ID,
                "url": self.apns.url, "ca": self.apns.ca_file}}),
        }


def write_apns_key(path: Path) -> Path:
    """An APNs token-signing key (``.p8``: PKCS#8 PEM of a P-256 key) at ``path``."""
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path
