"""Which gRPC addresses stay on this machine: plaintext is safe only there.

Loopback is 127.0.0.0/8, ::1, `localhost` and unix sockets; everything else
(0.0.0.0 and [::] too, which listen on every interface, and any host name,
whatever it resolves to today) is treated as reaching the network.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

# gRPC target prefixes (grpc/doc/naming.md) whose address follows.
_SCHEMES = ("dns:///", "dns:", "ipv4:", "ipv6:")


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT (a gRPC target or listen address) stays on this machine."""
    address = address.strip()
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in _SCHEMES:
        if address.startswith(scheme):
            address = address[len(scheme) :]
            break
    if "//" in address:  # dns://AUTHORITY/HOST:PORT
        address = address.rsplit("/", 1)[-1]
    if address.startswith("["):  # [v6]:port
        host = address[1:].split("]", 1)[0]
    elif address.count(":") == 1:
        host = address.split(":", 1)[0]
    else:  # a bare host, or a bare IPv6 address
        host = address
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: it may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def peer_host(peer: str) -> str:
    """The client address of a gRPC peer (`context.peer()`: "ipv4:10.0.0.7:51234",
    "ipv6:[::1]:51234", percent-encoded by newer grpc) without its port, written
    as the HTTP server writes a client's address (an IPv4-mapped IPv6 address
    as IPv4), so that one address is one key whichever API it calls. Callers
    over a unix socket are all "unix"; anything else is kept whole."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return "unix"
    if scheme not in ("ipv4", "ipv6"):
        return peer
    rest = urllib.parse.unquote(rest)
    if rest.startswith("["):
        host = rest[1:].split("]", 1)[0]
    else:
        host = rest.rsplit(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
