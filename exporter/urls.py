"""Base-URL comparison: a mirror's URL as configured and as the primary lists it rarely match to the letter."""

from __future__ import annotations

from urllib.parse import urlsplit


def normalize_url(url: str) -> str:
    """Scheme and host case, default ports and trailing slashes do not matter."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = (parts.hostname or "").lower() + (f":{port}" if port and port != default else "")
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"
