"""Who may use the gateway (``--auth``): on Linux only the user who runs it, told by the owner
of the peer's loopback socket in /proc/net/tcp (a process run as ``nobody`` is refused
everything); elsewhere a per-start token in the page's URL; ``none`` opts out. And the
parser of /proc/net/tcp on fixture text."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from sam2_service.web import peers
from sam2_service.web.config import WebConfig
from sam2_service.web.guard import resolve_access

from .conftest import Conversation, Gateway, start_gateway, stop

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")
#: /proc/net/tcp of a little-endian machine (rows cut after the inode): a gateway listening on 127.0.0.1:8000, a peer of
#: uid 65534 connected from port 53924, and the gateway's accepted socket (uid 0).
TCP = HEADER + """\
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1656
   1: 0100007F:D2A4 0100007F:1F40 01 00000000:00000000 00:00000000 00000000 65534        0 1700
   2: 0100007F:1F40 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 1701
   3: garbage line
"""
#: /proc/net/tcp6: a peer of uid 1000 on [::1]:50000, and one of uid 1001 whose IPv6 socket
#: reached an IPv4-mapped address (::ffff:127.0.0.1) from port 40000.
TCP6 = HEADER + (
    "   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1F40 01 "
    "00000000:00000000 00:00000000 00000000  1000        0 1800\n"
    "   1: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:1F40 01 "
    "00000000:00000000 00:00000000 00000000  1001        0 1801\n")


def test_proc_net_tcp_rows_are_parsed() -> None:
    rows = list(peers.parse_table(TCP, "little"))
    assert rows[1] == peers.SocketRow(("127.0.0.1", 53924), ("127.0.0.1", 8000), 65534)
    assert len(rows) == 3  # the garbage line is skipped
    rows6 = list(peers.parse_table(TCP6, "little"))
    assert rows6[0] == peers.SocketRow(("::1", 50000), ("::1", 8000), 1000)
    assert rows6[1].local == ("127.0.0.1", 40000)  # IPv4-mapped, matched as IPv4
    big = HEADER + TCP.splitlines()[2].replace("0100007F", "7F000001") + "\n"
    assert next(peers.parse_table(big, "big")).local == ("127.0.0.1", 53924)


def test_the_owner_is_the_peers_row_not_the_gateways() -> None:
    tables = [TCP, TCP6]
    assert peers.owner(tables, ("127.0.0.1", 53924), ("127.0.0.1", 8000), "little") == 65534
    assert peers.owner(tables, ("127.0.0.1", 8000), ("127.0.0.1", 53924), "little") == 0
    assert peers.owner(tables, ("::1", 50000, 0, 0), ("::1", 8000), "little") == 1000
    assert peers.owner(tables, ("::ffff:127.0.0.1", 40000), ("::ffff:127.0.0.1", 8000),
                       "little") == 1001
    assert peers.owner(tables, ("127.0.0.1", 1), ("127.0.0.1", 8000), "little") is None
    assert peers.owner(tables, ("10.0.0.9", 53924), ("127.0.0.1", 8000), "little") is None


@pytest.mark.skipif(not peers.can_tell_peers(), reason="needs /proc/net/tcp (Linux)")
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_peer_uid_of_a_live_connection_is_this_user(family: int, host: str) -> None:
    try:
        server = socket.socket(family)
        server.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} here")
    with server, socket.socket(family) as client:
        server.listen()
        client.connect(server.getsockname()[:2])
        accepted, _ = server.accept()
        with accepted:
            assert peers.peer_uid(accepted.getpeername(), accepted.getsockname()) == os.getuid()
            assert peers.peer_uid(("127.0.0.1", 9), accepted.getsockname()) is None


def test_auto_is_uid_on_loopback_under_linux_else_token() -> None:
    if peers.can_tell_peers():
        assert resolve_access(WebConfig()).mode == "uid"
        assert resolve_access(WebConfig(host="::1")).mode == "uid"
    assert resolve_access(WebConfig(host="0.0.0.0")).mode == "token"
    token = resolve_access(WebConfig(auth="token"))
    assert token.mode == "token" and len(token.token) >= 32
    assert resolve_access(WebConfig(auth="none")).token is None
    assert resolve_access(WebConfig()).instance != resolve_access(WebConfig()).instance
    with pytest.raises(ValueError, match="--auth / SAM2_WEB_AUTH must be one of"):
        WebConfig(auth="password")


#: Run by /usr/bin/python3 as ``nobody``: GET each path of the gateway at port argv[1] and a
#: WebSocket handshake; prints {path: [status, body]}.
AS_NOBODY = """
import http.client, json, sys
port, out = int(sys.argv[1]), {}
hs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
for path, headers in [("/health", {}), ("/app", {}), ("/", {}), ("/ws/realtime", hs)]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    out[path] = [r.status, r.read(4096).decode(errors="replace") if r.status != 101 else ""]
    c.close()
print(json.dumps(out))
"""


def as_nobody(port: int) -> dict[str, list]:
    """What a process of user ``nobody`` gets from the gateway on ``port``."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to run a process as nobody) and /usr/bin/python3")
    done = subprocess.run(["/usr/bin/python3", "-c", AS_NOBODY, str(port)], user=65534,
                          group=65534, extra_groups=[], cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.model
def test_another_user_is_refused_everything(gateway: Gateway, daemon) -> None:
    """Before: nobody segmented through the gateway and /health showed it the daemon's pid
    and socket path."""
    seen = as_nobody(gateway.port)
    assert {path: status for path, (status, _) in seen.items()} == {
        "/health": 403, "/app": 403, "/": 403, "/ws/realtime": 403}
    for _, body in seen.values():
        assert "serves only the user who runs it" in body and "uid 65534" in body
        assert daemon.socket_path not in body and '"pid"' not in body
    assert "refused GET /health from 127.0.0.1" in gateway.output()

    async def mine() -> int:  # this user (root) still may
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/health") as r:
                return r.status

    assert asyncio.run(mine()) == 200


def test_auth_none_serves_every_local_user(tmp_path: Path) -> None:
    g = start_gateway(tmp_path, str(tmp_path / "no-daemon.sock"), {"SAM2_WEB_AUTH": "none"})
    try:
        seen = as_nobody(g.port)
    finally:
        stop(g.process)
    assert seen["/health"][0] == 503 and seen["/app"][0] == 200 and seen["/ws/realtime"][0] == 101
    assert "anyone who reaches the port may use it" in g.output()


def test_token_mode_needs_the_printed_token(tmp_path: Path) -> None:
    g = start_gateway(tmp_path, str(tmp_path / "no-daemon.sock"), {"SAM2_WEB_AUTH": "token"})
    try:
        token = g.token()

        async def go() -> dict[str, object]:
            out: dict[str, object] = {}
            async with aiohttp.ClientSession() as http:
                for name, path, headers in [
                        ("app", "/app", {}), ("app+token", f"/app?token={token}", {}),
                        ("home+token", f"/?token={token}", {}),
                        ("health+wrong", "/health?token=x" + token, {}),
                        ("health+header", "/health", {"Authorization": f"token {token}"}),
                        ("js", "/static/app.js", {}), ("favicon", "/favicon.ico", {})]:
                    async with http.get(g.url + path, headers=headers) as r:
                        out[name] = (r.status, await r.text())
                try:
                    async with http.ws_connect(g.ws_url):
                        out["ws"] = 101
                except aiohttp.WSServerHandshakeError as exc:
                    out["ws"] = exc.status
                async with http.ws_connect(f"{g.ws_url}?token={token}") as ws:
                    out["ws+token"] = await Conversation(ws).expect("session_created")
            return out

        out = asyncio.run(go())
    finally:
        stop(g.process)
    statuses = {k: v[0] for k, v in out.items() if isinstance(v, tuple)}
    assert statuses == {"app": 403, "app+token": 200, "home+token": 200, "health+wrong": 403,
                        "health+header": 503, "js": 200, "favicon": 200}
    assert out["ws"] == 403
    assert "needs its token" in out["app"][1]
    instance = re.search(r'name="sam2-instance" content="([^"]+)"', out["app+token"][1]).group(1)
    assert out["ws+token"]["instance"] == instance  # the page's instance, echoed on connect
