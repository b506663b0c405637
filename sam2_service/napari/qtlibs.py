"""Which system libraries Qt's X11 (``xcb``) platform plugin needs and this machine lacks.

A minimal Linux (a container, a server image) often lacks a few of them; napari then stops at
start-up with ``Could not load the Qt platform plugin "xcb" ... Aborted``, before any plugin
runs. ``python -m sam2_service.napari.qtlibs`` says which are missing and the ``apt-get`` line
that installs them (Debian / Ubuntu package names). Imports no Qt widgets and no napari.
"""

from __future__ import annotations

import ctypes.util
import sys
from typing import Callable

#: Library (as :func:`ctypes.util.find_library` names it) -> Debian package, for Qt 5 and 6.
XCB_LIBRARIES = {
    "xcb": "libxcb1",
    "X11-xcb": "libx11-xcb1",
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-image": "libxcb-image0",
    "xcb-render-util": "libxcb-render-util0",
    "xcb-shape": "libxcb-shape0",
    "xcb-randr": "libxcb-randr0",
    "xcb-xkb": "libxcb-xkb1",
    "xcb-util": "libxcb-util1",
    "xkbcommon-x11": "libxkbcommon-x11-0",
    "xkbcommon": "libxkbcommon0",
    "fontconfig": "libfontconfig1",
    "dbus-1": "libdbus-1-3",
    "GL": "libgl1",
    "EGL": "libegl1",
}
#: Only Qt 6 (6.5 and later) needs xcb-cursor; only Qt 5 xcb-xinerama.
QT6_ONLY = {"xcb-cursor": "libxcb-cursor0"}
QT5_ONLY = {"xcb-xinerama": "libxcb-xinerama0"}


def required(qt_major: int = 6) -> dict[str, str]:
    """Library -> Debian package that Qt ``qt_major``'s xcb plugin needs."""
    return {**XCB_LIBRARIES, **(QT6_ONLY if qt_major >= 6 else QT5_ONLY)}


def missing_libraries(qt_major: int = 6,
                      find: Callable[[str], str | None] = ctypes.util.find_library) -> dict[str, str]:
    """The libraries of :func:`required` that ``find`` (``ctypes.util.find_library``) does not
    find, library -> Debian package; empty when all are there."""
    return {lib: pkg for lib, pkg in required(qt_major).items() if not find(lib)}


def advice(missing: dict[str, str]) -> str:
    """One line for a person: all present, or what is missing and the apt-get line."""
    if not missing:
        return "Qt's xcb platform plugin has all the system libraries it needs."
    return (f"Qt's xcb platform plugin lacks {', '.join(f'lib{lib}' for lib in missing)}: "
            f"sudo apt-get install {' '.join(missing.values())}")


def qt_major_version() -> int:
    """The major version of the Qt binding qtpy picks (6 when none can be imported)."""
    try:
        import qtpy  # QtCore only: loads no platform plugin
    except ImportError:
        return 6
    return int(str(qtpy.QT_VERSION).split(".")[0])


def main() -> int:
    """Print :func:`advice` for this machine; exit status 1 when something is missing."""
    if not sys.platform.startswith("linux"):
        print("Only Linux uses Qt's xcb platform plugin; nothing to check here.")
        return 0
    missing = missing_libraries(qt_major_version())
    print(advice(missing))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
