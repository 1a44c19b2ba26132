"""Connection node: WebSocket sessions, client registry and the private node API."""
