"""The Makefile's `run` and `install` recipes, run by make itself (nothing is installed:
`-o .venv/.installed` keeps make from running the set-up, `-n` only prints commands)."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAMP = ".venv/.installed"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None,
                                reason="needs make and bash")


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    """make in the repository with the Makefile's own defaults: no MODEL, SOCKET, DUMMY,
    TORCH_INDEX or SAM2_* from this environment, and no flags of an outer make."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MODEL", "SOCKET", "DUMMY", "TORCH_INDEX", "MAKEFLAGS", "MFLAGS",
                          "MAKELEVEL") and not k.startswith("SAM2_")}
    clean.update(env)
    return subprocess.run(["make", "-s", "-C", str(REPO), *args], env=clean,
                          capture_output=True, text=True, timeout=60)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.skipif(not (shutil.which("curl") or shutil.which("wget")),
                    reason="download_checkpoint.sh needs curl or wget")
@pytest.mark.parametrize("given, hint", [
    ([], "make run DUMMY=1"),
    (["MODEL=small", "SOCKET=/tmp/x.sock"], "make run DUMMY=1 MODEL=small SOCKET=/tmp/x.sock"),
    (["SOCKET=/tmp/y.sock"], "make run DUMMY=1 SOCKET=/tmp/y.sock"),
])
def test_run_without_network_suggests_dummy_with_the_same_model_and_socket(tmp_path, given,
                                                                           hint):
    r = make("-o", STAMP, "run", *given, f"CHECKPOINT={tmp_path / 'absent.pt'}",
             SAM2_CHECKPOINT_BASE_URL=f"http://127.0.0.1:{closed_port()}",
             SAM2_CHECKPOINT_DIR=str(tmp_path / "ckpt"), SAM2_DOWNLOAD_RETRIES="0")
    assert r.returncode != 0
    line = next(l for l in r.stderr.splitlines() if "is unreachable" in l)
    assert line.endswith(f"; start with random weights instead: {hint}"), line
    assert "sam2-service" not in r.stdout  # make stopped before serve

    # the suggested command starts the daemon with random weights, that model and socket
    hinted = make("-n", "-o", STAMP, *shlex.split(hint)[1:])
    serve = [l for l in hinted.stdout.splitlines() if " serve " in l]
    model = next((a[6:] for a in given if a.startswith("MODEL=")), "tiny")
    sock = next((a[7:] for a in given if a.startswith("SOCKET=")), "/tmp/wcc-sam2.sock")
    assert serve == [f".venv/bin/sam2-service serve --model {model} --socket {sock} "
                     "--dummy-weights"], hinted.stdout


def pip_installs(*args: str) -> list[list[str]]:
    """The argv of each `pip install` that `make install` would run (-B: even if installed)."""
    out = make("-n", "-B", "install", *args).stdout
    return [shlex.split(l) for l in out.splitlines() if " -m pip install " in l]


def test_install_uses_pypi_for_torch_by_default():
    steps = pip_installs()
    assert len(steps) == 3 and "torch>=2.5.1" in steps[0]
    assert not any("--index-url" in step or "--extra-index-url" in step for step in steps)


def test_torch_index_applies_to_the_torch_step_alone():
    index = "https://download.pytorch.org/whl/cpu"
    torch_step, *rest = pip_installs(f"TORCH_INDEX={index}")
    assert torch_step[torch_step.index("--index-url") + 1] == index
    assert torch_step[-2:] == ["torch>=2.5.1", "torchvision>=0.20.1"]
    assert len(rest) == 2 and not any("--index-url" in step for step in rest)


def test_install_ends_with_the_import_check_before_the_stamp():
    """A mismatched torch/torchvision pair fails `make install` itself (and leaves no stamp),
    instead of passing every step and failing at `make run`."""
    lines = make("-n", "-B", "install").stdout.splitlines()
    check = [i for i, l in enumerate(lines) if "install_check()" in l]
    stamp = [i for i, l in enumerate(lines) if l.strip() == f"touch {STAMP}"]
    assert len(check) == 1 and len(stamp) == 1 and check[0] == stamp[0] - 1
    assert check[0] > max(i for i, l in enumerate(lines) if " -m pip install " in l)


def test_run_refuses_an_unknown_model_before_the_set_up():
    """`make run MODEL=huge` names the models `serve` takes (not the download script's `all`)
    and stops before anything is installed or run."""
    from sam2_service.daemon.config import MODELS

    r = make("-n", "-B", "run", "MODEL=huge")
    assert r.returncode != 0 and r.stdout == ""
    assert "unknown MODEL 'huge': choose tiny, small, base_plus or large" in r.stderr
    assert " all" not in r.stderr.split("choose")[1]
    makefile = (REPO / "Makefile").read_text()
    assert f"MODELS := {' '.join(MODELS)}\n" in makefile


@pytest.mark.parametrize("args, expected", [
    ([], ".venv/bin/sam2-service web --socket /tmp/wcc-sam2.sock"),
    (["PORT=8001"], ".venv/bin/sam2-service web --socket /tmp/wcc-sam2.sock --port 8001"),
    (["SOCKET=/tmp/z.sock"], ".venv/bin/sam2-service web --socket /tmp/z.sock"),
])
def test_web_takes_port_and_socket(args, expected):
    assert make("-n", "-o", STAMP, "web", *args).stdout.splitlines() == [expected]


def test_napari_runs_the_venvs_napari_on_the_same_socket():
    out = make("-n", "-o", STAMP, "napari", "SOCKET=/tmp/z.sock").stdout.splitlines()
    assert out == ["SAM2_SERVICE_SOCKET=/tmp/z.sock .venv/bin/napari"]
