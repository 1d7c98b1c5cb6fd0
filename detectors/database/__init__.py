"""The detectors' I/O: the catalog read and HypoPG over an asyncpg side connection, and the review."""
