"""Client limits: a full pgloupe answers like a full PostgreSQL (53300) and keeps serving the others."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import asyncpg
import psycopg
import pytest

from proxy.protocol import wire

from .rawpg import NET_TIMEOUT, read_until_ready


def rejected(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pgloupe_client_connections_rejected_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


def test_beyond_max_client_connections_a_client_gets_53300_and_the_others_carry_on(start_proxy):
    proxy = start_proxy(max_client_connections=3)
    held = [psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        # libpq reports a refused connection without its SQLSTATE: the raw tests below check 53300
        assert "too many clients" in str(refused.value)
        for conn in held:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        held.pop().close()
        with psycopg.connect(proxy.dsn(), connect_timeout=10) as again:  # a place was freed
            assert again.execute("SELECT 2").fetchone() == (2,)
    finally:
        for conn in held:
            conn.close()
    assert rejected(proxy.http_port) == {"max_client_connections": 1.0, "max_connections_per_ip": 0.0}


def _session_from(port: int, source: str) -> tuple[socket.socket, list]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT, source_address=(source, 0))
    sock.settimeout(NET_TIMEOUT)
    sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
    return sock, read_until_ready(sock)


def test_max_connections_per_ip_counts_each_client_address(start_proxy):
    proxy = start_proxy(max_connections_per_ip=2)
    open_socks = []
    try:
        for _ in range(2):
            sock, messages = _session_from(proxy.port, "127.0.0.1")
            assert messages[-1][0] == b"Z"
            open_socks.append(sock)
        sock, messages = _session_from(proxy.port, "127.0.0.1")
        open_socks.append(sock)
        fields = wire.decode_fields(messages[-1][1])
        assert messages[-1][0] == b"E" and fields["C"] == "53300" and "127.0.0.1" in fields["M"]
        sock, messages = _session_from(proxy.port, "127.0.0.2")  # another address still gets in
        open_socks.append(sock)
        assert messages[-1][0] == b"Z"
    finally:
        for sock in open_socks:
            sock.close()
    assert rejected(proxy.http_port)["max_connections_per_ip"] == 1.0


def test_the_limit_holds_across_worker_processes(start_proxy):
    proxy = start_proxy(workers=2, max_client_connections=4)

    async def run():
        held = [await asyncpg.connect(proxy.dsn(), timeout=10) for _ in range(4)]
        try:
            with pytest.raises(asyncpg.TooManyConnectionsError):
                await asyncpg.connect(proxy.dsn(), timeout=10)
            for conn in held:
                assert await conn.fetchval("SELECT 1") == 1
            await held.pop().close()
            await asyncio.sleep(0.2)  # the worker tells the main process the place is free
            again = await asyncpg.connect(proxy.dsn(), timeout=10)
            await again.close()
        finally:
            for conn in held:
                await conn.close()

    asyncio.run(run())
    assert rejected(proxy.http_port)["max_client_connections"] == 1.0
