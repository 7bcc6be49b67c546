"""SSL contexts: the client's, for talking to Bitbucket, and the server's, for serving /metrics over TLS."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(
    verify: bool, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument: True for the system's trust store with nothing else to set."""
    if verify and ca_file is None and cert_file is None:
        return True
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        load_pair(context, cert_file, key_file)
    return context


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_pair(context, cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=str(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_pair(context: ssl.SSLContext, cert_file: Path, key_file: Path | None) -> None:
    """Load a certificate and its key, raising ValueError with OpenSSL's reason (never the key's content)."""
    try:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot load the certificate and key: {exc.reason or exc.strerror}") from None
    except OSError as exc:
        raise ValueError(f"cannot read the certificate or key: {exc.strerror or type(exc).__name__}") from None
