"""Endpoint node: the Web Push HTTP API."""
