"""Links the console draws from values it did not make: a client_ref is a
link only when it is an http(s) URL, and a preview only comes from the
configured template on an allowed host (a client_ref of `javascript:...` or a
template that an uploader could point elsewhere must not become one)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

SAFE_SCHEMES = ("http", "https")


def external_link(value: str) -> str | None:
    """`value` if it is an absolute http(s) URL with a host, else None."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in SAFE_SCHEMES or not parts.hostname:
        return None
    if any(c in value for c in "\r\n\t\"'<>` "):
        return None
    return value.strip()


def preview_url(
    template: str | None, allowed_hosts: frozenset[str], client_ref: str, request_id: str
) -> str | None:
    """The template with `{client_ref}` and `{request_id}` filled in (each
    percent-encoded whole, so a value cannot change the URL's host or path),
    if the result is an https URL on an allowed host."""
    if not template or not client_ref:
        return None
    url = template.replace("{client_ref}", quote(client_ref, safe="")).replace(
        "{request_id}", quote(request_id, safe="")
    )
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "https" or (parts.hostname or "").lower() not in allowed_hosts:
        return None
    return url


def preview_sources(allowed_hosts: frozenset[str]) -> str:
    """The hosts' origins for the CSP's img-src."""
    return " ".join(f"https://{host}" for host in sorted(allowed_hosts))
