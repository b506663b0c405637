"""The clients check the server's uid right after connecting and send nothing to a server run
by another user (``untrusted_server``). ``peer_uid`` is faked here; the real check against a
listener run as ``nobody`` is in tests/integration/test_client_transports.py."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from sam2_service.client import AsyncClient, Client, ClientError, RequestFailed, connection
from sam2_service.client.core import check_server_uid
from sam2_service.wire.frames import FrameDecoder, decode_message

from ..squatter import silent_listener

ME = os.geteuid()
OTHER = ME + 4242


@pytest.mark.parametrize("uid, own, refused", [(OTHER, ME, True), (ME, ME, False),
                                               (0, ME, False), (None, ME, False),
                                               (0, 0, False), (1000, 0, True)])
def test_check_server_uid(uid, own, refused):
    if not refused:
        check_server_uid(uid, "/tmp/x.sock", own)
        return
    with pytest.raises(RequestFailed) as info:
        check_server_uid(uid, "/tmp/x.sock", own)
    err = info.value
    assert err.code == "untrusted_server" and err.request_id == ""
    for words in ("/tmp/x.sock", f"uid {uid}", f"uid {own}", "nothing was sent", "--socket"):
        assert words in err.message


@pytest.fixture
def listener():
    """A bare listening socket in a short temp folder: (path, socket)."""
    with silent_listener(accept_timeout=2) as pair:
        yield pair


def received(srv: socket.socket) -> bytes:
    """Everything the first connection sent until it closed or went quiet for 0.3 s."""
    conn, _ = srv.accept()
    conn.settimeout(0.3)
    data = b""
    try:
        while chunk := conn.recv(1 << 16):
            data += chunk
    except socket.timeout:
        pass
    conn.close()
    return data


def ping(transport: str, path: str) -> dict:
    if transport == "sync":
        with Client(path, timeout=0.5) as c:
            return c.ping()

    async def run() -> dict:
        async with AsyncClient(path, timeout=0.5) as c:
            return await c.ping()

    return asyncio.run(run())


#: Both transports connect through :func:`sam2_service.client.connection.connect_steps`, which
#: asks ``connection.peer_uid`` for the server's uid.
TRANSPORTS = ["sync", "async"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_of_another_user_is_refused_before_anything_is_sent(transport, listener,
                                                                      monkeypatch):
    path, srv = listener
    monkeypatch.setattr(connection, "peer_uid", lambda sock: OTHER)
    with pytest.raises(RequestFailed) as info:
        ping(transport, path)
    assert info.value.code == "untrusted_server"
    assert path in info.value.message and f"uid {OTHER}" in info.value.message
    assert received(srv) == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("uid", [0, ME])
def test_root_or_the_same_user_is_trusted(transport, uid, listener, monkeypatch):
    """The ping goes out (the listener never answers, so the client times out)."""
    path, srv = listener
    monkeypatch.setattr(connection, "peer_uid", lambda sock: uid)
    with pytest.raises(ClientError, match="no reply") as info:
        ping(transport, path)
    assert not isinstance(info.value, RequestFailed)
    decoder = FrameDecoder(1 << 20)
    decoder.feed(received(srv))
    assert decode_message(decoder.next_frame())["op"] == "ping"
