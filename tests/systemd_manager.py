"""A private systemd user manager for tests (root only): a tmpfs over /run in a new mount
namespace, so the host's systemd is never touched. Shell scripts start with
:data:`MANAGER_START` and run under ``unshare -m sh -c``, with ``WORK`` (a scratch folder) and
``XDG_RUNTIME_DIR`` (a 0700 folder) in their environment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MANAGER_START = """\
set -eu
mount -t tmpfs tmpfs /run            # private to this mount namespace
mkdir -p /run/systemd/system         # "booted with systemd", for `systemd --user`
/lib/systemd/systemd --user >"$WORK/manager.log" 2>&1 3>&1 &
manager=$!
trap 'kill $manager; wait $manager || true' EXIT
for _ in $(seq 100); do [ -S "$XDG_RUNTIME_DIR/systemd/private" ] && break; sleep 0.1; done
"""


def can_run_a_user_manager() -> str | None:
    """None if a private user manager can run here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for /run)"
    for tool in ("unshare", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/lib/systemd/systemd").exists():
        return "/lib/systemd/systemd not installed"
    return None
