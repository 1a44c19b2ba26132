"""Deliverers, one per record ``router_type``: webpush (connection nodes or storage), FCM and APNs.

``delivery`` stamps each accepted message once and dispatches it; the
errors a deliverer refuses with are in ``autopush_flask.push_errors``.
"""
