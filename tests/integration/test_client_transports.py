"""Both client transports (sync ``Client``, asyncio ``AsyncClient``) on real sockets: a full
accept queue is waited out, a ``Client`` shared by threads gives each thread its own reply
(against the server with the fake engine of tests/fake_engine.py), and a socket squatted by
another user gets nothing from the clients or the CLI. No SAM2 model here."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sam2_service import cli
from sam2_service.client import AsyncClient, Client, RequestFailed
from sam2_service.wire.codecs import encode_png
from tests.fake_engine import FakeEngine

from ..squatter import bytes_received, nobody_uid, require_root_and_setpriv, squatter
from .conftest import short_tmp_socket_dir
from .test_server_faults import ServerThread, frame, read_frame


def ping_with(transport: str, path: str, timeout: float) -> dict:
    """One ping through ``Client`` or ``AsyncClient``."""
    if transport == "sync":
        with Client(path, timeout=timeout) as c:
            return c.ping()

    async def run() -> dict:
        async with AsyncClient(path, timeout=timeout) as c:
            return await c.ping()

    return asyncio.run(run())


@pytest.mark.parametrize("transport", ["sync", "async"])
def test_client_waits_out_a_full_accept_queue(transport):
    """A full listen backlog makes a Unix connect fail with EAGAIN at once (asyncio would take
    it for "in progress" and hand back an unconnected socket); both clients retry until their
    timeout. The listener is a bare socket that starts accepting, and answering pings, after
    0.3 s."""
    path = str(Path(short_tmp_socket_dir()) / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fillers = []
    with pytest.raises(BlockingIOError):
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            s.connect(path)

    def serve_later() -> None:
        time.sleep(0.3)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(0.5)  # the fillers, accepted first, never send anything
            try:
                request = read_frame(conn)
            except socket.timeout:
                continue
            if request is not None:
                conn.sendall(frame({"requestId": request.get("requestId", "x"), "ok": True}))

    threading.Thread(target=serve_later, daemon=True).start()
    try:
        t0 = time.perf_counter()
        assert ping_with(transport, path, timeout=10)["ok"] is True
        assert time.perf_counter() - t0 >= 0.25
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_a_client_shared_by_threads_gives_each_thread_its_own_reply():
    """Eight threads segment their own image (each of another size) through one Client, many
    times: every reply is the thread's own (requestId, mask size, mask content)."""
    srv = ServerThread(FakeEngine())
    errors: list[str] = []
    try:
        with Client(srv.config.socket_path, timeout=20) as client:
            def work(i: int) -> None:
                rng = np.random.default_rng(i)
                h, w = 6 + i, 8 + i
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                expected = np.where(image[..., 0] > 127, 255, 0)
                for j in range(15):
                    rid = f"t{i}-{j}"
                    if j % 5 == 4:
                        reply = client.ping()
                        got = (reply.get("ok"),)
                        if got != (True,):
                            errors.append(f"{rid}: ping got {reply}")
                        continue
                    r = client.segment(image, bbox=(0, 0, w, h), request_id=rid)
                    if r.request_id != rid or r.mask.shape != (h, w) \
                            or not np.array_equal(r.mask, expected):
                        errors.append(f"{rid}: got the reply to {r.request_id} {r.mask.shape}")

            threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert srv.engine.embeds == 8  # each image once: later requests went by imageId
    finally:
        srv.stop()


# --- a socket squatted by another user -------------------------------------------------------


def test_a_socket_bound_by_another_user_gets_nothing(tmp_path, capsys):
    """``nobody`` binds the socket first (the /tmp default makes this possible). The CLI's
    segment and ping, a Client and an AsyncClient each connect, read the server's uid and
    refuse it with ``untrusted_server`` before sending a byte."""
    require_root_and_setpriv()
    folder = Path(short_tmp_socket_dir())
    os.chmod(folder, 0o777)
    path = str(folder / "squat.sock")
    image = tmp_path / "img.png"
    image.write_bytes(encode_png(np.zeros((20, 30, 3), np.uint8)))
    with squatter(path) as squat:
        assert cli.main(["segment", "--socket", path, "--timeout", "5", "--image", str(image),
                         "--bbox", "1,1,20,15"]) == 1
        assert cli.main(["ping", "--socket", path, "--timeout", "5"]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and all("untrusted_server" in line for line in err), err
        assert f"uid {nobody_uid()}" in err[0] and path in err[0]
        for transport in ("sync", "async"):
            with pytest.raises(RequestFailed) as info:
                ping_with(transport, path, timeout=5)
            assert info.value.code == "untrusted_server"
        received = bytes_received(squat, connections=4)
    assert received == 0, f"the squatter received {received} bytes"
