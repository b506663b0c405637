"""The CLI's client commands without a daemon: negative coordinates after ``--bbox`` and
``--point``, and output paths checked before anything is sent."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from sam2_service import cli
from sam2_service.wire.codecs import encode_png

from ..squatter import silent_listener

NEGATIVE = ["segment", "--image", "a.png", "--bbox", "-50,-50,100,100", "--point", "-5,3",
            "--point", "-.5,2,0", "--point", "7,-1"]


def test_negative_coordinates_after_a_space_are_values():
    ns = cli.parse_args(NEGATIVE)
    assert ns.bbox == [-50.0, -50.0, 100.0, 100.0]
    assert ns.point == [[-5.0, 3.0], [-0.5, 2.0, 0.0], [7.0, -1.0]]


def test_argparse_alone_refuses_them(capsys):
    """What the pre-pass is for: without it the documented form fails."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(NEGATIVE)
    assert "expected one argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["segment", "--image", "-1.png", "--bbox=-1,2,3,4", "--point", "1,2"],
    ["segment", "--bbox", "--image", "x.png"],  # a missing value stays an error for argparse
    ["ping", "--", "--bbox", "-1,2,3,4"],
])
def test_other_arguments_are_left_alone(argv):
    assert cli.join_negative_values(argv) == argv


def test_a_missing_value_is_still_reported(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["segment", "--image", "x.png", "--bbox"])
    assert "expected one argument" in capsys.readouterr().err


@pytest.fixture
def listener():
    """A listening socket nobody answers on: (path, socket)."""
    with silent_listener(accept_timeout=0.2) as pair:
        yield pair


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    path.write_bytes(encode_png(np.zeros((20, 30, 3), np.uint8)))
    return path


def segment(path: str, image: Path, *extra: str) -> int:
    return cli.main(["segment", "--socket", path, "--timeout", "2", "--image", str(image),
                     "--bbox", "1,1,20,15", *extra])


@pytest.mark.parametrize("flag", ["--output", "--overlay"])
@pytest.mark.parametrize("case", ["missing folder", "a folder"])
def test_unwritable_output_fails_before_the_request(flag, case, listener, image, tmp_path,
                                                    capsys):
    path, srv = listener
    target = tmp_path / "missing" / "m.png" if case == "missing folder" else tmp_path
    assert segment(path, image, flag, str(target)) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"sam2-service: cannot write {flag} {target}: ")
    assert ("does not exist" if case == "missing folder" else "is a folder") in err[0]
    with pytest.raises(socket.timeout):  # nothing ever connected
        srv.accept()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_read_only_folder_fails_before_the_request(listener, image, tmp_path, capsys):
    path, srv = listener
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    assert segment(path, image, "--output", str(folder / "m.png")) == 1
    assert "permission denied" in capsys.readouterr().err
    with pytest.raises(socket.timeout):
        srv.accept()


def test_writable_outputs_go_on_to_the_request(listener, image, tmp_path, capsys):
    """The check lets a good path through: the request is sent (nobody answers here)."""
    path, srv = listener
    assert segment(path, image, "--output", str(tmp_path / "m.png"), "--overlay",
                   str(tmp_path / "o.png")) == 1
    assert "no reply within" in capsys.readouterr().err
    conn, _ = srv.accept()
    conn.close()


def test_a_folder_the_user_cannot_write_fails_before_the_request(listener, image, tmp_path,
                                                                  capsys, monkeypatch):
    """The same with the permission faked, so that it runs as root too."""
    path, srv = listener
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    assert segment(path, image, "--overlay", str(tmp_path / "o.png")) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sam2-service: cannot write --overlay {tmp_path / 'o.png'}: permission denied"]
    with pytest.raises(socket.timeout):
        srv.accept()
