"""Store URLs as they may be shown, and how long opening one may take."""

from __future__ import annotations

import re

# Opening a store that does not answer fails after this (seconds).
CONNECT_TIMEOUT_SECONDS = 5.0


def safe_url(url: str) -> str:
    """The URL as it may be printed or logged: the password replaced by ***
    (the user stays: a hint naming the URL must still work)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    tail = re.sub(r"(?i)(password=)[^&]*", r"\1***", tail)
    return f"{scheme}://{netloc}{slash}{tail}"
