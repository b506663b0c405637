"""Fixtures for the napari plugin's tests: a headless viewer on an Xvfb display, the integration
tests' real daemon (random-weight SAM2.1-tiny), and the plugin's widget in napari's
``make_napari_viewer`` viewer.

Qt platform: vispy's canvas is a QOpenGLWidget. Qt 5's ``offscreen`` platform gave it a GLX
context on the display; Qt 6's has no OpenGL widgets at all ("QOpenGLWidget is not supported on
this platform"), so under Qt 6 the tests use the ``xcb`` platform on the (invisible) Xvfb
display, whatever ``QT_QPA_PLATFORM`` said.

System libraries the Qt wheels (:mod:`sam2_service.napari.qtlibs`) and Mesa need are installed
with apt-get when missing and running as root (as CI does); otherwise the viewer tests are
skipped, saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Iterator

import pytest

from sam2_service.napari.qtlibs import qt_major_version, required
from tests.integration.conftest import Daemon, checkpoint, daemon  # noqa: F401

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
#: Debian packages: the X server, Mesa's GL drivers, and what the Qt wheels' xcb plugin needs.
APT_PACKAGES = ["xvfb", "libgl1-mesa-dri", *required(qt_major_version()).values()]


def _missing_packages() -> list[str]:
    missing = []
    for pkg in APT_PACKAGES:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def ensure_system_libraries() -> None:
    """apt-get install what :data:`APT_PACKAGES` lacks (as root), else skip with a reason."""
    if not shutil.which("dpkg-query"):
        if not shutil.which("Xvfb"):
            pytest.skip("the napari viewer tests need Xvfb and Mesa's OpenGL (no dpkg here)")
        return
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"the napari viewer tests need: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """An X display for OpenGL: ``$DISPLAY`` if set, else an Xvfb started here."""
    ensure_system_libraries()
    pytest.importorskip("napari", reason="pip install -e '.[napari]' (the plugin's extra)")
    _use_display_platform()
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    for n in range(90, 120):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    # Xvfb lives until this test process exits (a shell watches our pid): stopping it while Qt
    # is still connected would make Qt abort the process with an XIO error at teardown.
    watch = (f"Xvfb :{n} -screen 0 1280x1024x24 -nolisten tcp & x=$!; trap 'kill $x' EXIT; "
             f"while kill -0 {os.getpid()} 2>/dev/null && kill -0 $x 2>/dev/null; do sleep 1; done")
    proc = subprocess.Popen(["sh", "-c", watch], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Xvfb :{n} did not start")
        time.sleep(0.1)
    os.environ["DISPLAY"] = f":{n}"
    yield os.environ["DISPLAY"]


def _use_display_platform() -> None:
    """Qt 6: the ``xcb`` platform (its ``offscreen`` one has no OpenGL widgets); set before
    the viewer makes the QApplication."""
    if qt_major_version() >= 6:
        os.environ["QT_QPA_PLATFORM"] = "xcb"


@pytest.fixture
def viewer(display: str, make_napari_viewer: Any) -> Any:
    """A headless napari viewer."""
    return make_napari_viewer(show=False)


@pytest.fixture
def widget(viewer: Any, daemon: Daemon, qtbot: Any) -> Any:  # noqa: F811
    """The plugin's dock widget, connected to the test daemon."""
    from sam2_service.napari.widget import SegmentWidget

    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="SAM2")
    w.socket_edit.setText(daemon.socket_path)
    assert w.connect_daemon().startswith("Connected"), w.conn_label.text()
    return w


def wait_idle(qtbot: Any, widget: Any, timeout_s: float = 120) -> None:
    """Wait until the widget's requests have finished (results written)."""
    qtbot.waitUntil(lambda: widget.busy == 0, timeout=int(timeout_s * 1000))
    qtbot.wait(50)
