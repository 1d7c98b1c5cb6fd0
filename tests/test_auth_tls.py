"""Authentication and TLS through pgloupe, against the real server with real drivers.

pgloupe never sees a password: authentication is relayed untouched, so trust, md5 and SCRAM work
exactly as they do directly. TLS is terminated on each side separately: the client side with the
certificate pgloupe is given (or 'N' when it has none), the upstream side as upstream_sslmode says.
Because of that split, SCRAM-SHA-256-PLUS (channel binding to the server's certificate) can never
succeed for a client, so pgloupe withdraws it from the mechanisms the server offers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
import warnings

import asyncpg
import psycopg
import pytest
import trustme

from proxy.protocol import wire

from .rawpg import NET_TIMEOUT, raw_connect, read_until_ready, recv_exact, recv_message

try:
    from tests.conftest import MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER
except ImportError:  # tests/ without __init__.py: conftest's directory is on sys.path
    from conftest import MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER

pytestmark = pytest.mark.timeout(60)



# ---------------------------------------------------------------------------- raw protocol helpers


def fields_of(message: tuple[bytes, bytes]) -> dict[str, str]:
    mtype, body = message
    assert mtype == b"E", f"expected an ErrorResponse, got {mtype!r} {body!r}"
    return wire.decode_fields(body)


def auth_code(body: bytes) -> int:
    return struct.unpack_from("!i", body, 0)[0]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, NET_TIMEOUT * 2))


async def asyncpg_fetch(dsn: str, sql: str, **kwargs):
    conn = await asyncpg.connect(dsn, timeout=NET_TIMEOUT, **kwargs)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def psycopg_connect(dsn: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(dsn, **kwargs)


def ssl_in_use(conn: psycopg.Connection) -> bool:
    return bool(conn.pgconn.ssl_in_use)


def upstream_ssl(conn: psycopg.Connection) -> bool:
    return conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]


# ---------------------------------------------------------------------------- certificates


@pytest.fixture
def proxy_cert(ca: trustme.CA, tmp_path) -> tuple[str, str]:
    """A certificate for pgloupe's client side, from the CA the test server's certificate comes from."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return str(cert), str(key)


@pytest.fixture
def tls_proxy(start_proxy, proxy_cert):
    """Start pgloupe with client-side TLS on (extra settings pass through)."""
    cert, key = proxy_cert

    def start(**settings):
        return start_proxy(tls_cert=cert, tls_key=key, **settings)

    return start


# ---------------------------------------------------------------------------- authentication


CREDENTIALS = [
    pytest.param("postgres", None, id="trust"),
    pytest.param(MD5_USER, MD5_PASSWORD, id="md5"),
    pytest.param(SCRAM_USER, SCRAM_PASSWORD, id="scram-sha-256"),
]


@pytest.mark.parametrize(("user", "password"), CREDENTIALS)
def test_auth_psycopg(pg, start_proxy, user, password):
    pg.require_embedded()
    proxy = start_proxy()
    with psycopg_connect(proxy.dsn(user=user, password=password)) as conn:
        assert conn.execute("select current_user").fetchone()[0] == user
        assert conn.execute("select 40 + 2").fetchone()[0] == 42


@pytest.mark.parametrize(("user", "password"), CREDENTIALS)
def test_auth_asyncpg(pg, start_proxy, user, password):
    pg.require_embedded()
    proxy = start_proxy()
    assert run(asyncpg_fetch(proxy.dsn(user=user, password=password), "select current_user")) == user


def test_auth_methods_are_really_in_force(pg):
    """Guard for the tests above: the throwaway server does ask md5_user and scram_user for passwords."""
    pg.require_embedded()
    for user in (MD5_USER, SCRAM_USER):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg_connect(pg.dsn(user=user), sslmode="disable")


@pytest.mark.parametrize("user", [MD5_USER, SCRAM_USER])
def test_wrong_password_psycopg_same_as_direct(pg, start_proxy, user):
    pg.require_embedded()
    proxy = start_proxy()
    errors = []
    for dsn, port in ((pg.dsn(user=user, password="wrong"), pg.port),
                      (proxy.dsn(user=user, password="wrong"), proxy.port)):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg_connect(dsn, sslmode="disable")
        errors.append((info.value.sqlstate, str(info.value).replace(f"port {port}", "port N")))
    direct, proxied = errors
    assert "password authentication failed" in direct[1]
    assert proxied == direct


@pytest.mark.parametrize("user", [MD5_USER, SCRAM_USER])
def test_wrong_password_asyncpg_same_as_direct(pg, start_proxy, user):
    pg.require_embedded()
    proxy = start_proxy()
    errors = []
    for dsn in (pg.dsn(user=user, password="wrong"), proxy.dsn(user=user, password="wrong")):
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            run(asyncpg_fetch(dsn, "select 1", ssl=False))
        errors.append((info.value.sqlstate, info.value.args[0], info.value.detail))
    direct, proxied = errors
    assert direct[0] == "28P01"
    assert proxied == direct


def test_wrong_password_raw_errorresponse_same_as_direct(pg, start_proxy):
    """Byte-level: the server's ErrorResponse reaches the client unchanged (md5, so no client-side maths)."""
    pg.require_embedded()
    proxy = start_proxy()
    seen = []
    for port in (pg.port, proxy.port):
        with raw_connect(port) as sock:
            sock.sendall(wire.startup_message({"user": MD5_USER, "database": "postgres"}))
            mtype, body = recv_message(sock)
            assert mtype == b"R" and auth_code(body) == 5  # AuthenticationMD5Password
            sock.sendall(wire.message(b"p", b"md5" + b"0" * 32 + b"\0"))
            mtype, body = recv_message(sock)
            seen.append((mtype, wire.decode_fields(body)))
            assert sock.recv(1) == b""
    direct, proxied = seen
    assert direct[1]["C"] == "28P01"
    direct[1].pop("L", None), proxied[1].pop("L", None)  # source line: identical anyway, but irrelevant
    assert proxied == direct


# ---------------------------------------------------------------------------- SSLRequest / GSSENCRequest, client TLS off


def test_sslmode_prefer_without_client_tls(start_proxy):
    proxy = start_proxy()
    with psycopg_connect(proxy.dsn(sslmode="prefer")) as conn:
        assert not ssl_in_use(conn)
        assert conn.execute("select 1").fetchone()[0] == 1


def test_sslmode_require_without_client_tls_fails_clearly(start_proxy):
    proxy = start_proxy()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="(?i)server does not support SSL"):
        psycopg_connect(proxy.dsn(sslmode="require"))
    assert time.monotonic() - started < 5


def test_raw_sslrequest_answered_n(start_proxy):
    proxy = start_proxy()
    with raw_connect(proxy.port) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(sock, 1) == b"N"
        # Nothing else follows the single byte: the proxy waits for the startup packet.
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def _drain_until_closed(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


def test_not_a_startup_packet_is_closed_unanswered_as_postgresql_does(pg, start_proxy):
    """PostgreSQL logs an impossible startup length and closes without a word; answering with an
    ErrorResponse instead made a client that starts TLS after an 'N' (postgres.js with ssl: 'require')
    report the error bytes as a TLS 'wrong version number'."""
    proxy = start_proxy()
    tls_hello_head = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
    answers = {}
    for name, port in (("server", pg.port), ("pgloupe", proxy.port)):
        with raw_connect(port) as sock:
            sock.sendall(tls_hello_head)
            answers[name] = _drain_until_closed(sock)
    assert answers == {"server": b"", "pgloupe": b""}
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with raw_connect(proxy.port) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(sock, 1) == b"N"
        with pytest.raises((ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError)) as failure:
            context.wrap_socket(sock, server_hostname="localhost")
    assert "WRONG_VERSION_NUMBER" not in str(failure.value)
    assert proxy.app.proxy_counters()["protocol_errors"] == 2


def test_raw_gssencrequest_answered_n_then_session(start_proxy):
    proxy = start_proxy()
    with raw_connect(proxy.port) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877104))
        assert recv_exact(sock, 1) == b"N"
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        messages = read_until_ready(sock)
        assert messages[0][0] == b"R" and auth_code(messages[0][1]) == 0  # AuthenticationOk
        assert messages[-1] == (b"Z", b"I")
        assert b"K" in [m for m, _ in messages]
        sock.sendall(wire.message(b"Q", b"select 6 * 7 as answer\0"))
        reply = read_until_ready(sock)
        kinds = [m for m, _ in reply]
        assert kinds == [b"T", b"D", b"C", b"Z"]
        assert wire.decode_data_row(reply[1][1]) == [b"42"]
        assert reply[2][1] == b"SELECT 1\0"
        sock.sendall(wire.message(b"X", b""))
        assert sock.recv(1) == b""


def test_raw_gssenc_then_ssl_request_then_session(start_proxy):
    """libpq's own order with gssencmode=prefer: GSSENCRequest, SSLRequest, then the StartupMessage."""
    proxy = start_proxy()
    with raw_connect(proxy.port) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877104))
        assert recv_exact(sock, 1) == b"N"
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(sock, 1) == b"N"
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        assert read_until_ready(sock)[-1][0] == b"Z"


# ---------------------------------------------------------------------------- client-side TLS


def test_client_tls_sslmode_require(pg, tls_proxy):
    proxy = tls_proxy()
    with psycopg_connect(proxy.dsn(sslmode="require")) as conn:
        assert ssl_in_use(conn)
        assert upstream_ssl(conn) is False  # upstream_sslmode=disable: TLS ends at pgloupe
        assert conn.execute("select 1").fetchone()[0] == 1


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_client_tls_verify_full(pg, tls_proxy, host):
    pg.require_embedded()
    proxy = tls_proxy()
    with psycopg_connect(proxy.dsn(), host=host, hostaddr="127.0.0.1", sslmode="verify-full",
                         sslrootcert=pg.ca_file) as conn:
        assert ssl_in_use(conn)
        assert upstream_ssl(conn) is False
        assert conn.execute("select current_user").fetchone()[0] == "postgres"


def test_client_tls_verify_full_wrong_name_refused_by_client(pg, tls_proxy):
    """Guard for the test above: verify-full really checks pgloupe's certificate."""
    pg.require_embedded()
    proxy = tls_proxy()
    with pytest.raises(psycopg.OperationalError, match="(?i)certificate|does not match"):
        psycopg_connect(proxy.dsn(), host="example.invalid", hostaddr="127.0.0.1",
                        sslmode="verify-full", sslrootcert=pg.ca_file)


@pytest.mark.parametrize(("user", "password"), CREDENTIALS)
def test_client_tls_with_each_auth_method(pg, tls_proxy, user, password):
    pg.require_embedded()
    proxy = tls_proxy()
    # channel_binding=disable: see test_scram_channel_binding_prefer_over_tls for the default.
    with psycopg_connect(proxy.dsn(user=user, password=password, sslmode="require",
                                   channel_binding="disable")) as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select current_user").fetchone()[0] == user


def test_client_tls_asyncpg(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy()
    ctx = ssl.create_default_context(cafile=pg.ca_file)

    async def go():
        conn = await asyncpg.connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD), ssl=ctx,
                                     timeout=NET_TIMEOUT)
        try:
            assert conn._transport.get_extra_info("ssl_object") is not None
            return await conn.fetchval("select current_user")
        finally:
            await conn.close()

    assert run(go()) == SCRAM_USER


def test_client_tls_sslmode_prefer_negotiates_tls(pg, tls_proxy):
    proxy = tls_proxy()
    with psycopg_connect(proxy.dsn(sslmode="prefer")) as conn:
        assert ssl_in_use(conn)


def test_client_tls_disable_still_allowed_when_not_required(pg, tls_proxy):
    proxy = tls_proxy()
    with psycopg_connect(proxy.dsn(sslmode="disable")) as conn:
        assert not ssl_in_use(conn)
        assert conn.execute("select 1").fetchone()[0] == 1


def test_tls_required_refuses_plain_client(pg, tls_proxy):
    proxy = tls_proxy(tls_required=True)
    with pytest.raises(psycopg.OperationalError, match="pgloupe accepts only TLS") as info:
        psycopg_connect(proxy.dsn(sslmode="disable"))
    assert info.value.sqlstate in (None, "28000")

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as ainfo:
        run(asyncpg_fetch(proxy.dsn(), "select 1", ssl=False))
    assert ainfo.value.sqlstate == "28000"

    with raw_connect(proxy.port) as sock:
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        error = fields_of(recv_message(sock))
        assert error["C"] == "28000"
        assert sock.recv(1) == b""

    # ... while TLS clients are served.
    with psycopg_connect(proxy.dsn(sslmode="require")) as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select 1").fetchone()[0] == 1


def test_raw_sslrequest_answered_s_with_client_tls(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy()
    ctx = ssl.create_default_context(cafile=pg.ca_file)
    with raw_connect(proxy.port) as plain:
        plain.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(plain, 1) == b"S"
        with ctx.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
            assert read_until_ready(sock)[-1][0] == b"Z"
            sock.sendall(wire.message(b"Q", b"select 1\0"))
            reply = read_until_ready(sock)
            assert wire.decode_data_row(reply[1][1]) == [b"1"]


def test_client_tls_below_1_2_is_refused(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy()
    results = {}
    for name, highest in (("tls1.1", ssl.TLSVersion.TLSv1_1), ("tls1.2", ssl.TLSVersion.TLSv1_2)):
        ctx = ssl.create_default_context(cafile=pg.ca_file)
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = highest
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what it may, so the refusal is pgloupe's
        with raw_connect(proxy.port) as plain:
            plain.sendall(struct.pack("!ii", 8, 80877103))
            assert recv_exact(plain, 1) == b"S"
            try:
                with ctx.wrap_socket(plain, server_hostname="localhost") as sock:
                    results[name] = sock.version()
            except (ssl.SSLError, ConnectionError) as exc:
                results[name] = f"refused: {exc}"
    assert results["tls1.2"] == "TLSv1.2"
    assert results["tls1.1"].startswith("refused"), results


# ---------------------------------------------------------------------------- upstream TLS


def test_upstream_sslmode_require(pg, start_proxy):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    with psycopg_connect(proxy.dsn()) as conn:
        assert not ssl_in_use(conn)
        assert upstream_ssl(conn) is True


def test_upstream_sslmode_verify_full(pg, start_proxy):
    pg.require_embedded()
    assert pg.host == "127.0.0.1"
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="verify-full", upstream_sslrootcert=pg.ca_file)
    with psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD)) as conn:
        assert upstream_ssl(conn) is True
        assert conn.execute("select current_user").fetchone()[0] == SCRAM_USER
    assert run(asyncpg_fetch(proxy.dsn(), "select ssl from pg_stat_ssl where pid = pg_backend_pid()")) is True


def test_upstream_sslmode_verify_ca(pg, start_proxy):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="verify-ca", upstream_sslrootcert=pg.ca_file)
    with psycopg_connect(proxy.dsn()) as conn:
        assert upstream_ssl(conn) is True


def test_upstream_sslmode_in_url(pg, start_proxy):
    """?sslmode= in the upstream URL applies when upstream_sslmode is not set."""
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(sslmode="require"), upstream_sslmode=None)
    with psycopg_connect(proxy.dsn()) as conn:
        assert upstream_ssl(conn) is True


@pytest.fixture
def other_ca_file(tmp_path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_upstream_verify_full_wrong_ca_psycopg(pg, start_proxy, other_ca_file):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="verify-full", upstream_sslrootcert=other_ca_file)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg_connect(proxy.dsn())
    assert time.monotonic() - started < 8
    message = str(info.value)
    assert "pgloupe" in message
    assert "certificate verification failed" in message
    assert info.value.sqlstate in (None, "08006")
    assert proxy.app.proxy.stats.upstream_errors >= 1


def test_upstream_verify_full_wrong_ca_asyncpg_and_raw(pg, start_proxy, other_ca_file):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="verify-full", upstream_sslrootcert=other_ca_file)
    with pytest.raises(asyncpg.PostgresError) as info:
        run(asyncpg_fetch(proxy.dsn(), "select 1"))
    assert info.value.sqlstate == "08006"
    assert "pgloupe" in info.value.args[0] and "certificate verification failed" in info.value.args[0]

    with raw_connect(proxy.port) as sock:
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        error = fields_of(recv_message(sock))
        assert error["C"] == "08006"
        assert error["S"] == "FATAL"
        assert "certificate verification failed" in error["M"]
        assert sock.recv(1) == b""


def test_upstream_verify_full_hostname_mismatch(pg, ca, start_proxy, tmp_path):
    """Right CA, wrong name. The upstream here is a second pgloupe presenting a certificate for another name."""
    pg.require_embedded()
    issued = ca.issue_cert("db.example.invalid")
    cert, key = tmp_path / "other-name.crt", tmp_path / "other-name.key"
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    inner = start_proxy(tls_cert=str(cert), tls_key=str(key))
    inner_url = f"postgresql://postgres@127.0.0.1:{inner.port}/postgres"

    outer = start_proxy(upstream=inner_url, upstream_sslmode="verify-full", upstream_sslrootcert=pg.ca_file)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg_connect(outer.dsn())
    assert "pgloupe" in str(info.value) and "certificate verification failed" in str(info.value)
    assert "mismatch" in str(info.value) or "127.0.0.1" in str(info.value)

    # verify-ca does not check the name: the same chain is accepted.
    outer_ca = start_proxy(upstream=inner_url, upstream_sslmode="verify-ca", upstream_sslrootcert=pg.ca_file)
    with psycopg_connect(outer_ca.dsn()) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_upstream_sslmode_disable(pg, start_proxy):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="disable")
    with psycopg_connect(proxy.dsn()) as conn:
        assert upstream_ssl(conn) is False


def test_both_sides_tls(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="verify-full", upstream_sslrootcert=pg.ca_file)
    with psycopg_connect(proxy.dsn(user=MD5_USER, password=MD5_PASSWORD, sslmode="verify-full",
                                   sslrootcert=pg.ca_file)) as conn:
        assert ssl_in_use(conn)
        assert upstream_ssl(conn) is True


# ---------------------------------------------------------------------------- SCRAM-SHA-256-PLUS


def sasl_mechanisms_offered(sock: socket.socket, user: str) -> list[str]:
    sock.sendall(wire.startup_message({"user": user, "database": "postgres"}))
    mtype, body = recv_message(sock)
    assert mtype == b"R" and auth_code(body) == 10, f"expected AuthenticationSASL, got {mtype!r} {body!r}"
    return wire.sasl_mechanisms(body)


def test_server_offers_plus_over_tls_directly(pg):
    """Guard: over TLS the server itself does offer SCRAM-SHA-256-PLUS (so the proxy test means something)."""
    pg.require_embedded()
    ctx = ssl.create_default_context(cafile=pg.ca_file)
    with raw_connect(pg.port) as plain:
        plain.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(plain, 1) == b"S"
        with ctx.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
            mechanisms = sasl_mechanisms_offered(sock, SCRAM_USER)
    assert "SCRAM-SHA-256-PLUS" in mechanisms and "SCRAM-SHA-256" in mechanisms


def test_raw_sasl_mechanisms_stripped(pg, start_proxy):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    with raw_connect(proxy.port) as sock:
        mechanisms = sasl_mechanisms_offered(sock, SCRAM_USER)
    assert "SCRAM-SHA-256" in mechanisms
    assert "SCRAM-SHA-256-PLUS" not in mechanisms


def test_raw_sasl_mechanisms_stripped_with_client_tls(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    ctx = ssl.create_default_context(cafile=pg.ca_file)
    with raw_connect(proxy.port) as plain:
        plain.sendall(struct.pack("!ii", 8, 80877103))
        assert recv_exact(plain, 1) == b"S"
        with ctx.wrap_socket(plain, server_hostname="localhost") as sock:
            mechanisms = sasl_mechanisms_offered(sock, SCRAM_USER)
    assert mechanisms == ["SCRAM-SHA-256"]


def test_scram_through_plain_client_with_upstream_tls(pg, start_proxy):
    pg.require_embedded()
    proxy = start_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    with psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="disable")) as conn:
        assert upstream_ssl(conn) is True
    assert run(asyncpg_fetch(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD), "select 1")) == 1


def test_scram_asyncpg_tls_both_sides(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    ctx = ssl.create_default_context(cafile=pg.ca_file)
    assert run(asyncpg_fetch(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD), "select current_user",
                             ssl=ctx)) == SCRAM_USER


def test_scram_channel_binding_prefer_over_tls_both_sides_gets_a_hint(pg, tls_proxy):
    """libpq's default over TLS to pgloupe and TLS upstream: libpq, offered no PLUS mechanism, says it
    could bind ("y" gs2 flag) and the server, itself on TLS, rightly calls that a downgrade. The flag
    is covered by the client's proof, so no proxy can change it: pgloupe adds a hint saying what works."""
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    with pytest.raises(psycopg.OperationalError, match="channel binding") as info:
        psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require",
                                  channel_binding="prefer"))
    assert "channel_binding=disable" in str(info.value) and "tls_cert" in str(info.value)
    # what the hint says works: channel_binding=disable
    with psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require",
                                   channel_binding="disable")) as conn:
        assert ssl_in_use(conn) and upstream_ssl(conn) is True


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_scram_channel_binding_works_when_pgloupe_presents_the_servers_certificate(
        pg, start_proxy, certdir, channel_binding):
    """tls-server-end-point binds to the certificate the client sees; with the server's own certificate
    and key, pgloupe passes SCRAM-SHA-256-PLUS through and channel binding succeeds end to end."""
    pg.require_embedded()
    cert, key = certdir / "server" / "server.crt", certdir / "server" / "server.key"
    proxy = start_proxy(tls_cert=str(cert), tls_key=str(key), upstream_sslmode="verify-full",
                        upstream_sslrootcert=pg.ca_file)
    with psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="verify-full",
                                   sslrootcert=pg.ca_file, channel_binding=channel_binding)) as conn:
        assert ssl_in_use(conn) and upstream_ssl(conn) is True
        assert conn.execute("select current_user").fetchone()[0] == SCRAM_USER


def test_scram_channel_binding_prefer_over_tls_plain_upstream(pg, tls_proxy):
    """The same client against a plain upstream: works, as the server then accepts libpq's 'y' gs2 flag."""
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="disable")
    with psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require",
                                   channel_binding="prefer")) as conn:
        assert ssl_in_use(conn)
        assert upstream_ssl(conn) is False


def test_scram_channel_binding_require_fails_clearly(pg, tls_proxy):
    pg.require_embedded()
    proxy = tls_proxy(upstream=pg.dsn(), upstream_sslmode="require")
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="(?i)channel binding") as info:
        psycopg_connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require",
                                  channel_binding="require"))
    assert time.monotonic() - started < 8
    # libpq refuses by itself: the server offered no PLUS mechanism (no "FATAL" from anyone).
    assert "FATAL" not in str(info.value)
