"""Forwarding in worker processes: the pool (main process), the worker process, the channel between them."""
