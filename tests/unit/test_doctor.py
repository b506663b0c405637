"""sam2-service doctor: each check on good and broken set-ups, the table and the exit code."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from sam2_service import cli
from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.ops import doctor
from sam2_service.daemon.ops.doctor import FAIL, OK, WARN, Check
from sam2_service.wire.frames import FrameDecoder, decode_message, encode_message

from ..squatter import nobody_uid, require_root_and_setpriv, squatter, stale_socket_of_nobody

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """SAM2.1-tiny, random init (seed 0), in the official format; built once per module."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(TINY, None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture
def short_dir():
    """A short folder under /tmp, for socket paths well under the sun_path limit."""
    path = tempfile.mkdtemp(prefix="s2d-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(**kw) -> ServiceConfig:
    return ServiceConfig(**{"device": "cpu", **kw})


# -- software --------------------------------------------------------------------------------
def test_python_version():
    assert doctor.check_python().status == OK
    old = doctor.check_python((3, 9, 18))
    assert old.failed and "3.9.18" in old.detail and "3.10" in old.fix


def test_torch_and_sam2_present():
    import torch

    t = doctor.check_torch()
    assert t.status == OK and torch.__version__ in t.detail
    assert doctor.check_sam2().status == OK


def test_missing_torch_fails_and_dependent_checks_say_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert doctor.check_torch().failed
    assert doctor.check_cuda().status == WARN
    assert doctor.check_device(config()).status == WARN
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"12345")
    c = doctor.check_checkpoint(config(checkpoint=ckpt))
    assert c.status == WARN and "torch is missing" in c.detail


def test_missing_sam2_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    c = doctor.check_sam2()
    assert c.failed and "make install" in c.fix


# -- hardware --------------------------------------------------------------------------------
def test_accelerators_are_informational():
    import torch

    for c, available in ((doctor.check_cuda(), torch.cuda.is_available()),
                         (doctor.check_mps(), torch.backends.mps.is_available())):
        assert c.status == OK
        assert c.detail.startswith("available" if available else "not available"), c.detail


def test_device_resolution():
    c = doctor.check_device(config(device="cpu"))
    assert c.status == OK and c.detail.startswith("cpu") and "float32" in c.detail
    auto = doctor.check_device(config(device="auto"))
    assert auto.status == OK and auto.detail.startswith("auto -> ")


def test_every_listed_device_is_resolved():
    c = doctor.check_device(config(device="cpu,cpu"))
    assert c.status == OK and c.detail == "cpu,cpu, precision float32"
    import torch

    if not torch.cuda.is_available():
        for device in ("cuda:all", "cpu,cuda"):
            c = doctor.check_device(config(device=device))
            assert c.failed and "--device" in c.fix, c


def test_unavailable_requested_device_fails():
    import torch

    if torch.cuda.is_available():
        c = doctor.check_device(config(device=f"cuda:{torch.cuda.device_count()}"))
    else:
        c = doctor.check_device(config(device="cuda"))
    assert c.failed and "--device" in c.fix


# -- checkpoint ------------------------------------------------------------------------------
def test_good_checkpoint(good_checkpoint):
    c = doctor.check_checkpoint(config(checkpoint=good_checkpoint))
    assert c.status == OK, c
    assert "MB" in c.detail and "matches SAM2.1 tiny" in c.detail


def test_missing_checkpoint(tmp_path):
    c = doctor.check_checkpoint(config(checkpoint=tmp_path / "nope.pt"))
    assert c.failed and "not found" in c.detail and "download_checkpoint.sh tiny" in c.fix


def test_directory_as_checkpoint(tmp_path):
    assert "not a regular file" in doctor.check_checkpoint(config(checkpoint=tmp_path)).detail


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unloadable_checkpoint(tmp_path, good_checkpoint, damage):
    data = good_checkpoint.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    c = doctor.check_checkpoint(config(checkpoint=bad))
    assert c.failed and "torch.load failed" in c.detail


def test_torch_file_that_is_not_sam2(tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, path)
    c = doctor.check_checkpoint(config(checkpoint=path))
    assert c.failed and "image_encoder." in c.detail
    torch.save({"state_dict": {}}, path)
    assert "no 'model' state_dict" in doctor.check_checkpoint(config(checkpoint=path)).detail


def test_checkpoint_of_another_model_fails_the_comparison(tmp_path, good_checkpoint):
    import torch

    state = torch.load(good_checkpoint, map_location="cpu", weights_only=True)["model"]
    first = next(iter(state))
    state = {k: v for k, v in state.items() if k != first}
    state["image_encoder.extra"] = torch.zeros(1)
    path = tmp_path / "other.pt"
    torch.save({"model": state}, path)
    c = doctor.check_checkpoint(config(checkpoint=path))
    assert c.failed and "1 missing" in c.detail and "1 unexpected" in c.detail
    assert "--model" in c.fix


def test_compare_state_dict_reports_shapes():
    class T:
        shape = (2, 3)

    assert doctor.compare_state_dict({"a": T()}, {"a": (2, 3)}) == ""
    assert "1 with other shapes (e.g. a)" in doctor.compare_state_dict({"a": T()}, {"a": (3,)})


def test_dummy_weights_need_no_checkpoint(tmp_path):
    c = doctor.check_checkpoint(config(dummy_weights=True, checkpoint=tmp_path / "nope.pt"))
    assert c.status == WARN and "dummy weights" in c.detail


# -- socket ----------------------------------------------------------------------------------
def test_free_socket_path(short_dir):
    assert doctor.check_socket(f"{short_dir}/s.sock").status == OK


def test_socket_folder_missing(short_dir):
    c = doctor.check_socket(f"{short_dir}/no/s.sock")
    assert c.failed and "does not exist" in c.detail


def test_socket_path_too_long(short_dir):
    c = doctor.check_socket(f"{short_dir}/{'x' * 120}.sock")
    assert c.failed and "limit" in c.detail and "shorter" in c.fix


@pytest.mark.parametrize("kind", ["regular file", "directory", "symlink"])
def test_wrong_type_at_socket_path(short_dir, kind):
    path = f"{short_dir}/s.sock"
    if kind == "regular file":
        Path(path).write_text("x")
    elif kind == "directory":
        os.mkdir(path)
    else:
        os.symlink("/nonexistent", path)
    c = doctor.check_socket(path)
    assert c.failed and f"is a {kind}, not a socket" in c.detail and "serve never replaces" in c.fix


def test_stale_socket(short_dir):
    path = f"{short_dir}/s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    c = doctor.check_socket(path)
    assert c.status == WARN and "stale" in c.detail


def test_listener_that_is_not_a_daemon(short_dir):
    path = f"{short_dir}/s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)  # accepts into the backlog, never answers
    try:
        c = doctor.check_socket(path, timeout=0.3)
    finally:
        s.close()
    assert c.failed and "does not answer" in c.detail


def _fake_daemon(sock: socket.socket) -> None:
    """Answer ping and info on every connection, like the daemon (tiny on cpu)."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        decoder = FrameDecoder(1 << 20)
        with conn:
            while data := conn.recv(4096):
                decoder.feed(data)
                while (payload := decoder.next_frame()) is not None:
                    req = decode_message(payload)
                    conn.sendall(encode_message({"requestId": "r", "ok": True, "model": "tiny",
                                                 "device": "cpu", "pid": 4242,
                                                 "op": req.get("op")}))


def test_live_daemon_is_ok_already_running(short_dir):
    path = f"{short_dir}/s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    threading.Thread(target=_fake_daemon, args=(s,), daemon=True).start()
    try:
        c = doctor.check_socket(path)
    finally:
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    assert c.status == OK and "already running" in c.detail and "pid 4242" in c.detail


def test_listener_of_another_user_is_named(short_dir):
    """A squatter (``nobody``) on the path: FAIL naming its uid, not "does not answer"."""
    require_root_and_setpriv()
    os.chmod(short_dir, 0o1777)
    path = f"{short_dir}/s.sock"
    with squatter(path):
        c = doctor.check_socket(path, timeout=0.5)
    assert c.failed and f"another user, uid {nobody_uid()}" in c.detail, c
    assert "private --socket" in c.fix


def test_stale_socket_of_another_user_is_not_ours_to_replace(short_dir):
    path = f"{short_dir}/s.sock"
    stale_socket_of_nobody(path)
    c = doctor.check_socket(path)
    assert c.failed and "stale socket owned by another user" in c.detail, c


@pytest.mark.parametrize("mode,status,words", [
    (0o700, OK, "private"),
    (0o1777, OK, "sticky"),
    (0o777, WARN, "not sticky"),
    (0o770, WARN, "not sticky"),
])
def test_socket_folder_modes(short_dir, mode, status, words):
    os.chmod(short_dir, mode)
    c = doctor.check_socket_folder(f"{short_dir}/s.sock")
    assert c.status == status and words in c.detail, c


# -- log -------------------------------------------------------------------------------------
def test_log_paths(tmp_path):
    assert doctor.check_log(tmp_path / "a" / "b" / "log.txt").detail.endswith("will be created")
    existing = tmp_path / "log.txt"
    existing.write_text("")
    assert doctor.check_log(existing).status == OK


def test_unwritable_log_path_under_a_file(tmp_path):
    """A path under a regular file cannot be created, even by root (which ignores modes)."""
    (tmp_path / "file").write_text("")
    c = doctor.check_log(tmp_path / "file" / "sub" / "log.txt")
    assert c.failed and "is not a folder" in c.detail
    assert doctor.check_log(tmp_path).failed  # a folder where the file should be


# -- table and CLI ---------------------------------------------------------------------------
def test_table_has_one_aligned_line_per_check_and_fixes_for_problems():
    checks = [Check("python", OK, "3.11"), Check("checkpoint", FAIL, "not found", "download it"),
              Check("log", WARN, "odd", "look")]
    lines = doctor.format_table(checks).splitlines()
    assert lines == ["ok    python      3.11",
                     "FAIL  checkpoint  not found  fix: download it",
                     "warn  log         odd  fix: look"]
    assert doctor.exit_code(checks) == 1 and doctor.exit_code(checks[::2]) == 0


def test_a_check_that_raises_becomes_a_fail_line(monkeypatch):
    def boom():
        raise RuntimeError("bug")

    monkeypatch.setattr(doctor, "checks_for", lambda config: [boom])
    [c] = doctor.run_checks(config())
    assert c.failed and c.name == "boom" and "RuntimeError: bug" in c.detail


def _doctor_args(short_dir, checkpoint, *extra):
    return ["doctor", "--socket", f"{short_dir}/s.sock", "--log-file", f"{short_dir}/log/x.log",
            "--device", "cpu", "--checkpoint", str(checkpoint), *extra]


def test_cli_exit_code_zero_when_serve_could_start(short_dir, good_checkpoint, capsys):
    assert cli.main(_doctor_args(short_dir, good_checkpoint)) == 0
    out = capsys.readouterr().out
    names = [line.split()[1] for line in out.splitlines()[:11]]
    assert names == ["python", "torch", "torchvision", "sam2", "cuda", "mps", "device", "checkpoint",
                     "socket", "socket-folder", "log"]
    assert "FAIL" not in out and "no problems stop `serve`" in out


def test_cli_exit_code_non_zero_when_something_blocks_serving(short_dir, tmp_path, capsys):
    Path(f"{short_dir}/s.sock").write_text("not a socket")
    assert cli.main(_doctor_args(short_dir, tmp_path / "missing.pt")) == 1
    out = capsys.readouterr().out
    assert "2 problem(s) stop `serve`: checkpoint, socket" in out
    assert any(line.startswith("FAIL  checkpoint") and "fix: " in line for line in out.splitlines())


def test_cli_doctor_reports_a_bad_environment_variable(monkeypatch, capsys):
    monkeypatch.setenv("SAM2_SERVICE_LOG_MAX_MB", "lots")
    assert cli.main(["doctor"]) == 1
    assert "SAM2_SERVICE_LOG_MAX_MB" in capsys.readouterr().err


# -- torch and torchvision as a pair -------------------------------------------------------
@pytest.mark.parametrize("torch_v, vision_v, torch_cuda, vision_cuda, problem", [
    ("2.13.0+cpu", "0.28.0+cpu", None, None, None),
    ("2.14.1+cu130", "0.29.1+cu130", "13.0", 13000, None),
    ("2.5.1", "0.20.1", "12.4", 12040, None),
    # what a CPU index that could not be reached left behind: PyPI's CUDA torchvision
    ("2.13.0+cpu", "0.28.0", None, 12080,
     "torch 2.13.0+cpu is built for CPU but torchvision 0.28.0 for CUDA 12.8"),
    ("2.13.0+cpu", "0.29.1", None, None, "torchvision 0.29.1 does not match torch 2.13.0+cpu (it needs 0.28)"),
])
def test_torchvision_pair(torch_v, vision_v, torch_cuda, vision_cuda, problem):
    assert doctor.torchvision_pair_problem(torch_v, vision_v, torch_cuda, vision_cuda) == problem


def test_this_installs_torchvision_is_usable():
    c = doctor.check_torchvision()
    assert c.status == OK and c.detail == __import__("torchvision").__version__


def test_a_broken_torchvision_fails_with_the_pair_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import raises ImportError
    c = doctor.check_torchvision()
    assert c.failed and "not usable" in c.detail and "torchvision" in c.fix and "one index" in c.fix


def test_install_check_prints_each_failure_with_its_fix(monkeypatch, capsys):
    assert doctor.install_check() == 0 and capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert doctor.install_check() == 1
    err = capsys.readouterr().err
    assert err.startswith("make install: torchvision: not usable") and "fix: reinstall torch" in err


def test_another_sam2_release_is_a_warning_naming_the_one_written_for(monkeypatch):
    from sam2_service.daemon.inference import sam2_compat

    assert doctor.check_sam2().status == OK  # 1.1.0 here
    monkeypatch.setattr(doctor.importlib.metadata, "version", lambda name: "1.2.0")
    c = doctor.check_sam2()
    assert c.status == WARN and c.detail.startswith("1.2.0: ")
    assert f"sam2 {sam2_compat.WRITTEN_FOR}" in c.detail and f"sam2=={sam2_compat.WRITTEN_FOR}" in c.fix
