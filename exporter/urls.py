"""Checks for the URLs a configuration names: Bitbucket base URLs and the templates that give one URL per farm node."""

from __future__ import annotations

from urllib.parse import urlsplit

# What a node URL template may use: the fields of the mirror's farmNodes entry for the node.
NODE_PLACEHOLDERS = ("address", "port", "id", "name")


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    # Credentials in the URL would end up in logs and labels; they belong in username/password.
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials; use username/password or token")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or fragment")
    return url.rstrip("/")


def host_for_url(address: str) -> str:
    """An address as it goes in a URL: IPv6 in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def fill_node_template(template: str, address: str, port: int | None, node_id: str, name: str) -> str:
    return template.format(address=host_for_url(address), port="" if port is None else port, id=node_id, name=name)


def check_node_template(template: str, base_url: bool = True) -> str:
    """A template with only the farmNodes placeholders that gives an http(s) URL for each node: a base URL (for the
    REST API), or with ``base_url`` False any path (a jmx_exporter page)."""
    try:
        url = fill_node_template(template, "node.example", 7990, "node-1", "node-1")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"may use only the placeholders {{{'}, {'.join(NODE_PLACEHOLDERS)}}}") from None
    if not any(f"{{{name}}}" in template for name in ("address", "id", "name")):
        raise ValueError("must tell the nodes apart with {address}, {id} or {name}")
    if base_url:
        check_base_url(url)
        return template.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    return template
