"""The asyncio relay: listener, client and upstream connections, admission, TLS, the event queue."""
