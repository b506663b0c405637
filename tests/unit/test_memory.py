"""``--allocator`` (sam2_service.daemon.ops.memory), each case in a fresh interpreter: the
arena limit only applies to what is allocated after it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sam2_service.daemon.ops import memory


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_tuned_allocator_is_applied_on_glibc():
    out = run("from sam2_service.daemon.ops.memory import tune_allocator; "
              "print(tune_allocator('tuned'))")
    assert out == "tuned"


def test_system_allocator_changes_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: pytest.fail("mallopt must not be called"))
    assert memory.tune_allocator("system") == "system"


def test_other_platforms_say_why(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.tune_allocator("tuned") == "system (tuning needs glibc on Linux)"


def test_a_refused_setting_is_reported(monkeypatch):
    class Libc:
        def mallopt(self, param, value):
            return 0 if param == memory.M_MMAP_MAX else 1

    monkeypatch.setattr(memory, "_glibc", lambda: Libc())
    assert memory.tune_allocator("tuned") == "system (mallopt refused a setting)"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_tuned_allocator_keeps_large_blocks_mapped_once():
    """With the tuning, freeing and allocating a 64 MB block again faults (almost) no
    pages in; without it, glibc maps it afresh and every page faults again."""
    code = ("import resource, sys\n"
            "from sam2_service.daemon.ops.memory import tune_allocator\n"
            "tune_allocator(sys.argv[1])\n"
            "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "b = bytearray(64 << 20); del b\n"
            "f0 = faults(); b = bytearray(64 << 20); print(faults() - f0)\n")
    tuned = int(subprocess.run([sys.executable, "-c", code, "tuned"], capture_output=True,
                               text=True, check=True).stdout)
    system = int(subprocess.run([sys.executable, "-c", code, "system"], capture_output=True,
                                text=True, check=True).stdout)
    assert system > 10_000  # 64 MB / 4 KiB pages = 16,384
    assert tuned < system / 10
