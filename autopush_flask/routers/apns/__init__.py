"""Delivery to iOS devices through Apple's push service over HTTP/2 (docs/protocol.md#bridges).

Split by concern: ``channel`` (one release channel's settings),
``credentials`` (PEM files, the TLS client certificate, the provider JWT),
``client`` (pooled HTTP/2 to Apple) and ``router`` (registration data,
payload and the mapping of Apple's answers to the protocol's errors).
"""

from autopush_flask.routers.apns.channel import ApnsChannel
from autopush_flask.routers.apns.router import DEFAULT_APS, ApnsRouter

__all__ = ["DEFAULT_APS", "ApnsChannel", "ApnsRouter"]
