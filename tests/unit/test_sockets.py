"""The daemon's socket path checks: missing folder, own stale socket, own live daemon, and
another user's socket (never removed, refused with its uid)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

from sam2_service.daemon.config import StartupError
from sam2_service.daemon.serving import sockets
from sam2_service.daemon.serving.sockets import bind_unix_socket, check_socket_path

from ..squatter import (
    nobody_uid,
    require_root_and_setpriv,
    shared_sticky_dir,
    squatter,
    stale_socket_of_nobody,
)


@pytest.fixture
def short_dir():
    path = tempfile.mkdtemp(prefix="s2k-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sticky_dir():
    path = shared_sticky_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_missing_folder_is_one_line(short_dir):
    with pytest.raises(StartupError, match="folder .*/no does not exist") as info:
        check_socket_path(f"{short_dir}/no/s.sock")
    assert "\n" not in str(info.value)


def test_own_stale_socket_is_removed(short_dir):
    path = f"{short_dir}/s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    check_socket_path(path)
    assert not os.path.exists(path)


def test_own_live_listener_is_already_running(short_dir):
    path = f"{short_dir}/s.sock"
    s = bind_unix_socket(path)
    try:
        with pytest.raises(StartupError, match="already running"):
            check_socket_path(path)
    finally:
        s.close()


def test_permission_error_becomes_one_line(short_dir, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(sockets.os, "lstat", denied)
    with pytest.raises(StartupError, match="cannot use socket path .*Permission denied"):
        check_socket_path(f"{short_dir}/s.sock")


def test_another_users_stale_socket_is_never_removed(short_dir):
    """Even root leaves another user's file alone (chown stands in for another user)."""
    path = f"{short_dir}/s.sock"
    stale_socket_of_nobody(path)
    with pytest.raises(StartupError, match=f"stale socket of another user, uid {nobody_uid()}"):
        check_socket_path(path)
    assert os.path.exists(path)


def test_squatter_of_another_user_is_named(sticky_dir):
    require_root_and_setpriv()
    path = f"{sticky_dir}/s.sock"
    with squatter(path):
        with pytest.raises(StartupError, match=f"a listener of another user, uid {nobody_uid()}"):
            check_socket_path(path)
        assert os.path.exists(path)
