"""TLS contexts for both sides of the proxy."""

from __future__ import annotations

import ssl

from proxy.config import ConfigError, Settings, Upstream


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """The context pgloupe presents to clients, or None when client TLS is off."""
    if not settings.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {settings.tls_cert}: {exc}") from exc
    return ctx


def upstream_context(upstream: Upstream) -> ssl.SSLContext | None:
    """libpq's sslmode semantics: require encrypts only, verify-ca checks the chain, verify-full the name too."""
    if upstream.sslmode in ("disable", "allow"):
        return None  # allow: plain first, as libpq; a server that insists on TLS refuses us in pg_hba
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if upstream.sslmode in ("verify-ca", "verify-full"):
        try:
            if upstream.sslrootcert:
                ctx.load_verify_locations(upstream.sslrootcert)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load upstream root certificate {upstream.sslrootcert}: {exc}") from exc
        ctx.check_hostname = upstream.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def certificate_der(path: str) -> bytes:
    """The first certificate of a PEM file, DER-encoded, to compare with the upstream's."""
    try:
        with open(path) as fh:
            pem = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS certificate {path}: {exc.strerror}") from exc
    end = pem.find("-----END CERTIFICATE-----")
    if end < 0:
        raise ConfigError(f"no certificate in {path}")
    return ssl.PEM_cert_to_DER_cert(pem[: end + len("-----END CERTIFICATE-----")])
