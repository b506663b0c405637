"""The check for the system libraries Qt's xcb platform plugin needs, with a fake finder."""

from __future__ import annotations

from sam2_service.napari import qtlibs


def test_all_found_says_so() -> None:
    assert qtlibs.missing_libraries(6, find=lambda lib: f"lib{lib}.so") == {}
    assert "has all" in qtlibs.advice({})


def test_missing_ones_are_named_with_their_apt_packages() -> None:
    gone = {"xcb-icccm", "xcb-keysyms", "xcb-cursor", "xcb-xinerama"}
    missing = qtlibs.missing_libraries(6, find=lambda lib: None if lib in gone else "found")
    # Qt 6 needs xcb-cursor and not xcb-xinerama; Qt 5 the reverse
    assert missing == {"xcb-icccm": "libxcb-icccm4", "xcb-keysyms": "libxcb-keysyms1",
                       "xcb-cursor": "libxcb-cursor0"}
    assert qtlibs.advice(missing).endswith(
        "sudo apt-get install libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0")
    qt5 = qtlibs.missing_libraries(5, find=lambda lib: None if lib in gone else "found")
    assert set(qt5) == {"xcb-icccm", "xcb-keysyms", "xcb-xinerama"}


def test_main_prints_the_advice(monkeypatch, capsys) -> None:
    monkeypatch.setattr(qtlibs.sys, "platform", "linux")
    monkeypatch.setattr(qtlibs, "qt_major_version", lambda: 6)
    monkeypatch.setattr(qtlibs, "missing_libraries", lambda major: {"xcb-cursor": "libxcb-cursor0"})
    assert qtlibs.main() == 1
    assert "libxcb-cursor" in capsys.readouterr().out
