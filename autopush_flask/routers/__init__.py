"""Delivery routers: webpush (connection nodes or storage), FCM and APNs."""
