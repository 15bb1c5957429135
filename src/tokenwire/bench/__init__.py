"""Measuring the gateway: ``tokenwire bench`` (latency per model and transport) and ``tokenwire loadtest``."""
