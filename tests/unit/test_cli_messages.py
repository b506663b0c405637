"""The CLI's messages as a new user meets them: one line (no traceback) for Ctrl-C, a bad
timeout, a huge image or a file that is no image; messages that name what is wrong (a socket
path that is a file, NaN coordinates, the socket to start a daemon on); ``--overlay`` drawing
every ``--box``; the ``maskId`` of a plain segment; and ``auto``'s hint and wait.

A :class:`FakeDaemon` (a thread answering frames on a Unix socket) stands in for the daemon."""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import socket
import struct
import tempfile
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from sam2_service import cli
from sam2_service.client import (
    Client,
    ImageMemo,
    ImageTooLargeError,
    ImageUnreadable,
    SegmentOptions,
    build_segment_request,
    prepare_image,
)
from sam2_service.client.connection import connect_failure, start_hint
from sam2_service.client.ops import segment_steps
from sam2_service.client.overlay import BOX_COLOR
from sam2_service.wire.auto import encode_labels
from sam2_service.wire.codecs import encode_mask_as, encode_png
from sam2_service.wire.frames import DEFAULT_SOCKET, FrameDecoder, decode_message, encode_message
from sam2_service.wire.limits import DEFAULT_MAX_IMAGE_PIXELS

from ..client_steps import drive
from ..squatter import silent_listener

H, W = 40, 60


# --- helpers ---------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels (an empty IDAT): its
    header reads, its pixels never decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def tiff_header(width: int, height: int) -> bytes:
    """A 1x1 TIFF whose width and height tags say ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        (tag,) = struct.unpack_from("<H", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength, as LONG
            struct.pack_into("<HHII", data, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def mask_reply(msg: dict[str, Any]) -> dict[str, Any]:
    """A segment reply to ``msg``: an all-foreground mask of its size, the extended fields
    (maskId, one mask per box) when it asked for an encoding."""
    w, h = msg["width"], msg["height"]
    key, value = encode_mask_as(np.ones((h, w), bool), msg.get("maskEncoding", "raw"))
    reply = {"requestId": msg["requestId"], "maskWidth": w, "maskHeight": h, key: value,
             "score": 0.5, "inferenceTimeMs": 1.0, "imageId": "a" * 64, "cached": False}
    if "maskEncoding" in msg:
        reply.update(maskEncoding=msg["maskEncoding"], maskId="m" + "1" * 32)
        if msg.get("boxes"):
            reply["masks"] = [{"score": 0.5, key: value, "maskId": f"m{i:032d}"}
                              for i, _ in enumerate(msg["boxes"])]
    return reply


def info_reply(msg: dict[str, Any], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               auto_timeout: float = 600.0, dummy: bool = False) -> dict[str, Any]:
    reply = {"requestId": msg.get("requestId", "srv-1"), "ok": True, "weights": "random",
             "limits": {"maxImagePixels": max_pixels, "autoTimeout": auto_timeout}}
    if dummy:
        reply.update(weights="dummy", warning="DUMMY WEIGHTS: masks are meaningless")
    return reply


def auto_reply(msg: dict[str, Any]) -> dict[str, Any]:
    w, h = msg["width"], msg["height"]
    return {"requestId": msg["requestId"], "ok": True, "labelsWidth": w, "labelsHeight": h,
            "labelsBase64": encode_labels(np.zeros((h, w), np.uint16)), "labels": [],
            "imageId": "a" * 64, "timingsMs": {}}


class FakeDaemon:
    """Answers each request frame on a Unix socket with ``answers[op](request)`` (``op``
    ``segment`` when absent) and keeps the requests in ``received``."""

    def __init__(self, **answers: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.answers = {"info": info_reply, "segment": mask_reply, "auto": auto_reply, **answers}
        self.path = str(Path(tempfile.mkdtemp(prefix="s2m-", dir="/tmp")) / "d.sock")
        self.received: list[dict[str, Any]] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.path)
        self._srv.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def ops(self) -> list[str]:
        return [m.get("op", "segment") for m in self.received]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(1 << 30)
        while data := conn.recv(1 << 16):
            decoder.feed(data)
            while (payload := decoder.next_frame()) is not None:
                msg = decode_message(payload)
                self.received.append(msg)
                conn.sendall(encode_message(self.answers[msg.get("op", "segment")](msg)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self._srv.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    daemon = FakeDaemon()
    yield daemon
    daemon.close()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    path.write_bytes(encode_png(np.zeros((H, W, 3), np.uint8)))
    return path


@contextlib.contextmanager
def sigint_after(seconds: float) -> Iterator[None]:
    """Ctrl-C (SIGINT to this process) ``seconds`` from now, unless the block ended first."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def one_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


# --- 1. one line instead of a traceback --------------------------------------------------------

def test_ctrl_c_while_waiting_for_the_reply_is_one_line_and_exit_130(image, capsys):
    with silent_listener(accept_timeout=5) as (path, srv), sigint_after(0.3):
        code = cli.main(["segment", "--socket", path, "--timeout", "5", "--image", str(image),
                         "--point", "3,4"])
    assert code == 130
    assert one_line(capsys) == "sam2-service: interrupted"


def test_ctrl_c_while_connecting_is_one_line_and_exit_130(image, capsys):
    """A full accept queue: the client retries the connect until Ctrl-C."""
    with silent_listener(accept_timeout=5) as (path, srv):
        srv.listen(0)
        waiting = []
        with contextlib.suppress(BlockingIOError):
            for _ in range(64):  # fill the queue: the next connect gets EAGAIN
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                waiting.append(c)
                c.setblocking(False)
                c.connect(path)
        with sigint_after(0.3):
            code = cli.main(["ping", "--socket", path, "--timeout", "5"])
        for c in waiting:
            c.close()
    assert code == 130
    assert one_line(capsys) == "sam2-service: interrupted"


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "abc"])
def test_a_bad_timeout_flag_is_refused_naming_it(value, monkeypatch, capsys):
    monkeypatch.delenv("SAM2_SERVICE_TIMEOUT", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["segment", "--image", "x.png", "--timeout", value])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == ("sam2-service segment: error: argument --timeout: must be a number of "
                    f"seconds > 0, got {value!r}")


@pytest.mark.parametrize("value", ["-5", "abc", "0"])
@pytest.mark.parametrize("command", ["ping", "auto"])
def test_a_bad_timeout_variable_is_refused_naming_it(value, command, monkeypatch, capsys):
    monkeypatch.setenv("SAM2_SERVICE_TIMEOUT", value)
    argv = [command] + (["--image", "x.png", "--output", "o.png"] if command == "auto" else [])
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == ("sam2-service: error: SAM2_SERVICE_TIMEOUT: must be a number of seconds "
                    f"> 0, got {value!r}")


def test_the_timeout_comes_from_the_flag_then_the_variable_then_the_default(monkeypatch):
    monkeypatch.setenv("SAM2_SERVICE_TIMEOUT", "7")
    assert cli.parse_args(["ping", "--timeout", "2.5"]).timeout == 2.5
    ns = cli.parse_args(["ping"])
    assert (ns.timeout, ns.timeout_given) == (7.0, True)
    monkeypatch.setenv("SAM2_SERVICE_TIMEOUT", "")  # empty: as if unset
    ns = cli.parse_args(["ping"])
    assert (ns.timeout, ns.timeout_given) == (300.0, False)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "abc", None])
def test_the_client_refuses_a_timeout_that_is_not_a_positive_number(value):
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        Client("/nonexistent.sock", timeout=value)
    client = Client("/nonexistent.sock", timeout=1)
    with pytest.raises(ValueError):
        client.timeout = value
    assert client.timeout == 1.0


def test_an_image_over_the_daemons_limit_is_one_line_and_nothing_is_sent(fake, tmp_path,
                                                                          capsys):
    """14000x14000 is past Pillow's own bomb limit too: before, a traceback of ImageTooLarge."""
    big = tmp_path / "big.png"
    big.write_bytes(png_header(14000, 14000))
    code = cli.main(["segment", "--socket", fake.path, "--image", str(big), "--point", "3,4"])
    assert code == 1
    assert one_line(capsys) == (
        f"sam2-service: {big} is 14000x14000 = 196000000 pixels, more than the daemon's limit "
        "of 40000000 pixels (maxImagePixels); nothing was sent: make the image smaller, or "
        "start the daemon with a larger --max-image-pixels")
    assert fake.ops == ["info"]  # its limit asked for; no image sent


# --- 2. messages that name what is wrong ------------------------------------------------------

@pytest.mark.parametrize("content", ["hello\n", "hi\n", ""])  # short: too short for BMP's check
def test_a_text_file_as_image_is_named(content, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text(content)
    with silent_listener(accept_timeout=0.2) as (path, srv):
        code = cli.main(["segment", "--socket", path, "--image", str(text), "--point", "1,1"])
        with pytest.raises(socket.timeout):  # nothing ever connected
            srv.accept()
    assert code == 1
    assert one_line(capsys) == f"sam2-service: {text} is not an image Pillow can read"


def test_a_missing_image_is_named(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert cli.main(["segment", "--socket", "/nonexistent.sock", "--image", str(missing),
                     "--point", "1,1"]) == 1
    assert one_line(capsys) == f"sam2-service: cannot read {missing}: No such file or directory"


def test_unreadable_images_raise_image_unreadable_an_oserror_too():
    with pytest.raises(ImageUnreadable, match="the image bytes is not an image") as info:
        prepare_image(b"plain text")
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("kind", ["regular file", "folder"])
def test_a_socket_path_that_is_no_socket_says_so(kind, image, tmp_path, capsys):
    target = tmp_path / "d.sock"
    target.mkdir() if kind == "folder" else target.write_text("")
    code = cli.main(["segment", "--socket", str(target), "--image", str(image), "--point", "1,1"])
    assert code == 1
    line = one_line(capsys)
    assert line.startswith(f"sam2-service: cannot connect to {target}: it is not a socket "
                           f"(it is a {kind}); ")
    assert "make run" not in line


def test_the_start_hint_repeats_a_socket_given(image, tmp_path, capsys):
    path = str(tmp_path / "none.sock")
    assert cli.main(["segment", "--socket", path, "--image", str(image), "--point", "1,1"]) == 1
    assert one_line(capsys) == (
        f"sam2-service: cannot connect to {path}: No such file or directory (is the daemon "
        f"running? start it with `make run SOCKET={path}` or `sam2-service serve --socket "
        f"{path}`)")
    assert start_hint(DEFAULT_SOCKET) == "`make run`"  # make run's own socket
    assert connect_failure(path, PermissionError(13, "Permission denied")) == (
        f"cannot connect to {path}: Permission denied")  # no daemon to start there


@pytest.mark.parametrize("flag, value", [("--point", "nan,10"), ("--point", "1,inf"),
                                         ("--point", "1,2,nan"), ("--bbox", "0,0,nan,5"),
                                         ("--box", "-inf,0,4,5")])
def test_non_finite_coordinates_are_refused_by_the_cli(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["segment", "--image", "x.png", flag, value])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith(f"must be finite numbers (not nan or inf): {value!r}")
    assert f"argument {flag}" in last


@pytest.mark.parametrize("options, message", [
    ({"points": [(math.nan, 10)]}, "points[0].x must be a finite number, got nan"),
    ({"points": [(1, 2), (3, 4, math.inf)]}, "points[1].label must be a finite number, got inf"),
    ({"bbox": (0, 0, math.inf, 4)}, "bbox.x2 must be a finite number, got inf"),
    ({"boxes": [(0, 0, 1, 1), (0, np.float64("nan"), 1, 1)]},
     "boxes[1].y1 must be a finite number, got nan"),
    ({"points": [("a", 1)]}, "points[0].x must be a number, got 'a'"),
])
def test_non_finite_coordinates_are_refused_by_the_client(options, message):
    """Before, NaN went on the wire as null and the daemon named a null."""
    with pytest.raises(ValueError) as info:
        build_segment_request(np.zeros((4, 4), np.uint8), **options)
    assert str(info.value) == message
    with pytest.raises(ValueError):
        Client("/nonexistent.sock").segment(np.zeros((4, 4), np.uint8), **options)


# --- 3. the size from the header, against the daemon's limit ----------------------------------

def test_a_100_mp_tiff_is_refused_from_its_header_without_a_bomb_warning(fake, tmp_path,
                                                                         capsys):
    tiff = tmp_path / "scan.tif"
    tiff.write_bytes(tiff_header(10_000, 10_000))  # no pixels: decoding it would fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(["segment", "--socket", fake.path, "--image", str(tiff),
                         "--point", "1,1"])
    assert code == 1
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert one_line(capsys).startswith(f"sam2-service: {tiff} is 10000x10000 = 100000000 "
                                       "pixels, more than the daemon's limit of 40000000")


def test_prepare_image_refuses_from_the_header():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would raise
        with pytest.raises(ImageTooLargeError) as info:
            prepare_image(png_header(10_000, 10_000))
    err = info.value
    assert (err.code, err.request_id, err.width, err.height, err.limit) == (
        "image_too_large", "", 10_000, 10_000, DEFAULT_MAX_IMAGE_PIXELS)
    with pytest.raises(ImageTooLargeError, match="the image array is 10x10"):
        prepare_image(np.zeros((10, 10), np.uint8), max_pixels=99)
    memo = ImageMemo()
    memo.max_image_pixels = 99
    with pytest.raises(ImageTooLargeError, match="limit of 99 pixels"):
        memo.prepare(np.zeros((10, 10), np.uint8))


def answer(limit: int) -> Callable[[dict], dict]:
    return lambda m: info_reply(m, max_pixels=limit) if m.get("op") == "info" else mask_reply(m)


def test_an_image_over_the_default_asks_the_daemon_for_its_own_limit():
    """A daemon started with a larger --max-image-pixels gets the image."""
    big = png_header(8_000, 6_000)  # 48 MP: over the default
    memo = ImageMemo()
    result, sent = drive(segment_steps(memo, big, SegmentOptions(points=[(1, 1)])),
                         answer(50_000_000))
    assert [m.get("op", "segment") for m in sent] == ["info", "segment"]
    assert memo.max_image_pixels == 50_000_000 and result.mask.shape == (6_000, 8_000)
    with pytest.raises(ImageTooLargeError, match="limit of 40000000 pixels"):
        drive(segment_steps(ImageMemo(), big, SegmentOptions()), answer(40_000_000))


def test_once_the_limit_is_known_no_info_is_asked():
    memo = ImageMemo()
    memo.max_image_pixels = 1000
    with pytest.raises(ImageTooLargeError, match="limit of 1000 pixels"):
        drive(segment_steps(memo, png_header(40, 40), SegmentOptions()), answer(10**9))
    _, sent = drive(segment_steps(ImageMemo(), png_header(40, 40), SegmentOptions()),
                    answer(10**9))
    assert [m.get("op", "segment") for m in sent] == ["segment"]  # under the default: no info


def test_info_keeps_the_limit(fake):
    fake.answers["info"] = lambda m: info_reply(m, max_pixels=1234)
    with Client(fake.path, timeout=5) as client:
        client.info()
        assert client.memo.max_image_pixels == 1234
        with pytest.raises(ImageTooLargeError, match="limit of 1234 pixels"):
            client.segment(np.zeros((40, 40), np.uint8), points=[(1, 1)])


# --- 4. and 5. the overlay draws every box; a plain segment prints its maskId ------------------

def test_the_overlay_draws_every_box(fake, image, tmp_path, capsys):
    overlay = tmp_path / "o.png"
    boxes = [(2, 3, 20, 15), (30, 20, 55, 35)]
    argv = ["segment", "--socket", fake.path, "--image", str(image), "--overlay", str(overlay)]
    for box in boxes:
        argv += ["--box", ",".join(map(str, box))]
    assert cli.main(argv) == 0, capsys.readouterr().err
    drawn = np.asarray(Image.open(overlay).convert("RGB"))
    for x1, y1, x2, y2 in boxes:  # each box's corners are in the box colour
        for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
            assert tuple(drawn[y, x]) == BOX_COLOR, (x, y)


def test_a_plain_segment_asks_for_and_prints_its_mask_id(fake, image, capsys):
    assert cli.main(["segment", "--socket", fake.path, "--image", str(image),
                     "--point", "3,4"]) == 0
    assert fake.received[-1]["maskEncoding"] == "raw"
    assert "maskId=m" + "1" * 32 in capsys.readouterr().out.splitlines()


# --- 6. auto: the random-weights hint, and the daemon's wait -----------------------------------

def run_auto(fake, image, tmp_path, *extra: str) -> int:
    return cli.main(["auto", "--socket", fake.path, "--image", str(image), "--output",
                     str(tmp_path / "labels.png"), *extra])


def test_auto_with_random_weights_and_no_labels_says_how_to_see_masks(fake, image, tmp_path,
                                                                      capsys):
    fake.answers["info"] = lambda m: info_reply(m, dummy=True)
    assert run_auto(fake, image, tmp_path) == 0
    out, err = capsys.readouterr()
    assert out.startswith("labels=0 ")
    assert err.splitlines() == [
        "sam2-service: note: no objects: the daemon runs with random weights "
        "(--dummy-weights), whose masks rarely pass the default filters; to see them anyway: "
        "--pred-iou-thresh 0 --stability-score-thresh 0"]
    assert run_auto(fake, image, tmp_path, "--pred-iou-thresh", "0",
                    "--stability-score-thresh", "0") == 0
    assert capsys.readouterr().err == ""  # filters already off: nothing to add


def test_auto_with_real_weights_adds_no_hint(fake, image, tmp_path, capsys):
    assert run_auto(fake, image, tmp_path) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("extra, env, wait", [((), None, 630.0), (("--timeout", "5"), None, 5.0),
                                              ((), "7", 7.0)])
def test_auto_waits_as_long_as_the_daemon_allows(extra, env, wait, fake, image, tmp_path,
                                                 monkeypatch):
    """The daemon's autoTimeout (600 s) and a margin, unless a timeout was given."""
    if env is None:
        monkeypatch.delenv("SAM2_SERVICE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("SAM2_SERVICE_TIMEOUT", env)
    waits = []
    real_auto = Client.auto

    def auto(self, *args, **kw):
        waits.append(self.timeout)
        return real_auto(self, *args, **kw)

    monkeypatch.setattr(Client, "auto", auto)
    assert run_auto(fake, image, tmp_path, *extra) == 0
    assert waits == [wait]
    assert fake.ops == ["info", "auto"]


def test_the_overlays_decode_without_pillows_bomb_check(fake, image, tmp_path, monkeypatch,
                                                        capsys):
    """The daemon's limit was held against the header: ``--overlay`` decodes an image past
    Pillow's MAX_IMAGE_PIXELS (before: a warning, past twice it a traceback)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the image has 2400 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["segment", "--socket", fake.path, "--image", str(image), "--point",
                         "3,4", "--overlay", str(tmp_path / "o.png")]) == 0
        assert run_auto(fake, image, tmp_path, "--overlay", str(tmp_path / "a.png")) == 0
    assert capsys.readouterr().err == ""
