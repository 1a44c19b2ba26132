"""What the endpoint's handlers share in one worker: services plus the message dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from werkzeug.urls import iri_to_uri

from autopush_flask.config import Settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.vapid import VapidVerifier
from autopush_flask.db import Storage
from autopush_flask.db.models import SortKeyClock
from autopush_flask.endpoint.publisher_controls import PublisherControls
from autopush_flask.node_auth import RouterRequestKeys
from autopush_flask.routers.apns import ApnsRouter
from autopush_flask.routers.bridge import BridgeRouter, UnconfiguredBridge
from autopush_flask.routers.delivery import Deliverer, Dispatcher, MessageStamper
from autopush_flask.routers.fcm import FcmRouter
from autopush_flask.routers.stub import DisabledStub, StubRouter
from autopush_flask.routers.webpush import WebPushRouter, node_pool
from autopush_flask.services import Services
from autopush_flask.tracking import DeliveryTracker

STATE_KEY = "autopush_endpoint"


@dataclass
class EndpointState:
    services: Services
    dispatcher: Dispatcher
    # Delivery milestones (docs/operations.md#delivery-tracking), on the worker's metrics.
    milestones: DeliveryTracker
    # Bridge routers with credentials: the types the registration API accepts.
    bridges: dict[str, BridgeRouter] = field(default_factory=dict)
    vapid: VapidVerifier = field(default_factory=VapidVerifier)
    publisher_controls: PublisherControls = field(default_factory=PublisherControls)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def crypto_keys(self) -> CryptoKeys:
        return self.services.crypto_keys

    @property
    def metrics(self) -> Any:
        return self.services.metrics

    @cached_property
    def vapid_audience(self) -> str:
        """The origin of our endpoint URLs: what a VAPID ``aud`` must say."""
        parts = urlsplit(self.settings.endpoint_url)
        return f"{parts.scheme}://{parts.netloc}"

    @cached_property
    def location_prefix(self) -> str:
        """What a 201's ``Location`` starts with, as a URI: the message id that
        follows is base64url, which a URI carries as it is (``webpush.Created``)."""
        return iri_to_uri(f"{self.settings.endpoint_url}/m/")


def build_state(node_services: Services) -> EndpointState:
    settings = node_services.settings
    http = node_pool(settings.node_connect_timeout, settings.node_request_timeout, settings.router_ca)
    router_keys = RouterRequestKeys.from_crypto_keys(node_services.crypto_keys)
    webpush = WebPushRouter(
        node_services.storage, node_services.metrics, http, router_keys, durable=settings.durable_direct
    )
    bridges = configured_bridges(node_services)
    deliverers: dict[str, Deliverer] = {"webpush": webpush}
    deliverers.update({kind: bridges.get(kind) or _unconfigured(kind) for kind in BRIDGE_FACTORIES})
    dispatcher = Dispatcher(MessageStamper(node_services.crypto_keys, SortKeyClock()), deliverers)
    controls = PublisherControls.from_settings(settings.allowed_vapid_keys, settings.push_rate)
    milestones = DeliveryTracker(node_services.metrics, settings.sender_tags)
    vapid = VapidVerifier(settings.vapid_cache_bytes)
    return EndpointState(node_services, dispatcher, milestones, bridges, vapid, controls)


BRIDGE_FACTORIES = {
    "fcm": ("fcm_credentials", FcmRouter),
    "apns": ("apns_channels", ApnsRouter),
    "stub": ("stub_router", StubRouter),  # a flag, not credentials (routers/stub.py)
}


def _unconfigured(kind: str) -> Deliverer:
    """What answers pushes to records of a bridge this node does not enable."""
    return DisabledStub() if kind == "stub" else UnconfiguredBridge(kind)


def configured_bridges(node_services: Services) -> dict[str, BridgeRouter]:
    """One router per bridge whose credentials are configured."""
    settings = node_services.settings
    return {
        kind: factory(settings, node_services.storage, node_services.metrics)
        for kind, (setting, factory) in BRIDGE_FACTORIES.items()
        if getattr(settings, setting)
    }


def endpoint_state() -> EndpointState:
    return current_app.extensions[STATE_KEY]
