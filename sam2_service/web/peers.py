"""Who is on the other end of a loopback TCP connection: the uid that owns the peer's socket,
read from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (Linux), as identd does.

A TCP connection between two local processes appears twice in those tables: once as the
gateway's accepted socket (local = the gateway's address, remote = the peer's) and once as the
peer's own socket (local = the peer's address and port, remote = the gateway's), whose ``uid``
column is the user that created it. :func:`peer_uid` finds that second row.

The tables print each address as hex of 32-bit words in the kernel's byte order (127.0.0.1 is
``0100007F`` on a little-endian machine) and the port as 4 hex digits; an IPv4 peer of an IPv6
socket is ``::ffff:a.b.c.d`` and is matched as the IPv4 address. Pure parsing plus one read of
each table; no third-party code.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Iterable, Iterator, NamedTuple

#: The kernel's tables of TCP sockets, IPv4 and IPv6.
PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")

Address = tuple[str, int]  # (normalised IP text, port)


class SocketRow(NamedTuple):
    """One row of a ``/proc/net/tcp*`` table: its local and remote (address, port), its uid."""

    local: Address
    remote: Address
    uid: int


def normalise(host: str) -> str:
    """The text of an IP address as the tables are matched: IPv4-mapped IPv6 as IPv4, no
    zone id, compressed IPv6."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _address(field: str, byteorder: str) -> Address:
    """``0100007F:1F40`` -> ("127.0.0.1", 8000); 32 hex digits for IPv6."""
    hex_ip, hex_port = field.split(":")
    raw = b"".join(int(hex_ip[i:i + 8], 16).to_bytes(4, byteorder)  # type: ignore[arg-type]
                   for i in range(0, len(hex_ip), 8))
    return normalise(str(ipaddress.ip_address(raw))), int(hex_port, 16)


def parse_table(text: str, byteorder: str = sys.byteorder) -> Iterator[SocketRow]:
    """The rows of one ``/proc/net/tcp`` or ``/proc/net/tcp6`` text (its header line and any
    malformed line skipped). ``byteorder`` is the kernel's (this machine's)."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            yield SocketRow(_address(fields[1], byteorder), _address(fields[2], byteorder),
                            int(fields[7]))
        except ValueError:
            continue


def owner(tables: Iterable[str], peer: Address, own: Address,
          byteorder: str = sys.byteorder) -> int | None:
    """The uid of the socket whose local address is ``peer`` and remote address ``own``
    (both ``(ip, port)``, any spelling :func:`normalise` accepts), in the texts ``tables``;
    None when no row matches."""
    want_local = (normalise(peer[0]), peer[1])
    want_remote = (normalise(own[0]), own[1])
    for text in tables:
        for row in parse_table(text, byteorder):
            if row.local == want_local and row.remote == want_remote:
                return row.uid
    return None


def can_tell_peers() -> bool:
    """Whether this machine's TCP table can be read (Linux with /proc)."""
    return os.access(PROC_TABLES[0], os.R_OK)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:  # no IPv6, or no /proc: that table has no rows
        return ""


def peer_uid(peer: tuple, own: tuple) -> int | None:
    """The uid owning the local socket at the other end of a connection whose peer address is
    ``peer`` and own address ``own`` (``getpeername()`` / ``getsockname()`` tuples, IPv4 or
    IPv6); None when it is not a local socket (another machine) or cannot be read."""
    try:
        return owner((_read(p) for p in PROC_TABLES), (peer[0], peer[1]), (own[0], own[1]))
    except (ValueError, IndexError, TypeError):
        return None
