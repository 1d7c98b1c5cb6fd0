"""Sans-IO PostgreSQL protocol: bytes and the time they arrived in, statement facts out; no asyncio,
sockets, clock or threads."""
