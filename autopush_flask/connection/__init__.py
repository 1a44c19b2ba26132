"""Connection node: WebSocket sessions, client registry and private router."""
