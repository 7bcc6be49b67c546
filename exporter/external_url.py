"""``--web.external-url``: the URL under which people reach the exporter (as Prometheus' flag of the same name), the
base of the alerts' ``runbook_url`` (``rules``) and of what the exporter says about itself. A page opened from an
alert on a phone cannot reach a loopback address: ``check-config`` and ``rules`` warn about one."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

RUNBOOKS_PATH = "/runbooks"
WILDCARDS = ("", "0.0.0.0", "::")


def parse(value: str) -> str:
    """The URL without a trailing slash; ValueError naming what is wrong."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r}: an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # Not echoed: the value holds a secret.
        raise ValueError("no credentials in the URL (it appears in every alert)")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: no query or fragment")
    return value.strip().rstrip("/")


def default(host: str, port: int, tls: bool) -> str:
    """As Prometheus derives its own: this machine's name where the exporter listens on every address."""
    name = socket.gethostname() if host in WILDCARDS else host
    if ":" in name:
        name = f"[{name}]"
    return f"{'https' if tls else 'http'}://{name}:{port}"


def runbooks(external_url: str) -> str:
    return external_url + RUNBOOKS_PATH


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_warning(url: str, what: str) -> str | None:
    """A warning when ``url`` points at a loopback address, else None."""
    if not is_loopback(url):
        return None
    return (
        f"warning: {what} {url} is a loopback address: a link opened from a page on a phone or another machine "
        "cannot reach it; set the address your team reaches it by"
    )
