"""Service definitions for the daemon: systemd user units and a launchd LaunchAgent.

One home for what ``sam2-service install-service`` writes (docs/service.md explains it):

- systemd (Linux): ``sam2-service.socket`` owns the Unix socket (socket activation) and
  starts ``sam2-service.service``, a ``Type=notify`` service with a watchdog;
- launchd (macOS): ``~/Library/LaunchAgents/<LAUNCHD_LABEL>.plist``, optionally with a
  ``Sockets`` entry (:data:`LAUNCHD_SOCKET_NAME`) for launch_activate_socket(3).

The daemon runs as ``<python> -m sam2_service serve <flags>``, where the flags are those
settings of a :class:`~sam2_service.daemon.config.ServiceConfig` that differ from the defaults.
"""

from __future__ import annotations

import math
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from ..config import ServiceConfig, settings

SYSTEMD_SERVICE = "sam2-service.service"
SYSTEMD_SOCKET = "sam2-service.socket"
#: launchd job label (reverse-DNS); the plist is ``<label>.plist``.
LAUNCHD_LABEL = "io.github.sam2-service"
#: Key of the plist's ``Sockets`` entry; pass it to ``systemd.launchd_sockets``.
LAUNCHD_SOCKET_NAME = "Listeners"
PLATFORMS = ("systemd", "launchd")
#: systemd ``WatchdogSec=``: a CPU image encode takes ~3 s, a large image on a slow laptop
#: much longer; the daemon pings from its event loop, not from the inference thread.
DEFAULT_WATCHDOG_SEC = 120
#: systemd ``TimeoutStartSec=``: model load and warm-up before READY=1 can be slow on CPU.
START_TIMEOUT_SEC = 300
DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "service.md"


def default_platform(platform: str = sys.platform) -> str:
    """``"launchd"`` on macOS (``darwin``), ``"systemd"`` elsewhere."""
    return "launchd" if platform == "darwin" else "systemd"


def _flag_value(name: str, value: object, scale: int) -> str:
    if isinstance(value, Path) or name == "socket_path":
        return str(Path(value).expanduser().absolute())  # the service runs in another cwd
    if scale != 1:
        if value % scale:  # type: ignore[operator]
            raise ValueError(f"{name}={value} is not a whole number of MB")
        return str(value // scale)  # type: ignore[operator]
    return str(value)


def serve_arguments(config: ServiceConfig) -> list[str]:
    """``serve`` flags for the settings of ``config`` that differ from the defaults.

    Paths (socket, checkpoint, log file) are made absolute, since the service does not run in
    the current directory. Boolean settings give their flag alone (``--dummy-weights``,
    ``--no-warmup``). Sizes are given in the CLI's MB.

    Raises:
        ValueError: a byte size is not a whole number of MB (the CLI cannot express it).
    """
    args: list[str] = []
    for f in settings():
        value = getattr(config, f.name)
        if value == f.default:
            continue
        if f.metadata.get("type") is bool:
            args.append(f.metadata["flag"])
            continue
        args += [f.metadata["flag"], _flag_value(f.name, value, f.metadata.get("scale", 1))]
    return args


def _check_line(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"control character in a service file value: {text!r}")
    return text


def systemd_value(text: str) -> str:
    """``text`` for a unit-file setting that expands specifiers: ``%`` doubled.

    Raises:
        ValueError: ``text`` contains a control character (e.g. a newline) or ends with a
            backslash (which would continue the line).
    """
    if _check_line(text).endswith("\\"):
        raise ValueError(f"a unit-file value cannot end with a backslash: {text!r}")
    return text.replace("%", "%%")


def systemd_quote(arg: str, executable: bool = False) -> str:
    """One ``ExecStart=`` word, quoted per systemd.syntax(7) and systemd.service(5).

    ``%`` becomes ``%%`` (specifiers) and, in arguments, ``$`` becomes ``$$`` (variable
    expansion; the executable is never expanded). Words with whitespace, quotes or
    backslashes are double-quoted with ``\\`` and ``"`` escaped; a lone ``;`` becomes ``\\;``.

    Raises:
        ValueError: a control character, or in the executable a quote or backslash (systemd
            refuses those executable names).
    """
    text = _check_line(arg).replace("%", "%%")
    if executable:
        if any(c in text for c in "\"'\\") or not text.startswith("/"):
            raise ValueError(f"systemd cannot run this executable path: {arg!r}")
    else:
        text = text.replace("$", "$$")
    if text == ";":
        return "\\;"
    if text and not any(c.isspace() or c in "\"'\\" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command(config: ServiceConfig, executable: str | None) -> list[str]:
    return [executable or sys.executable, "-m", "sam2_service", "serve", *serve_arguments(config)]


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _unit_text(sections: Sequence[tuple[str, Sequence[tuple[str, object]]]]) -> str:
    blocks = ["\n".join([f"[{name}]", *(f"{k}={v}" for k, v in items)]) for name, items in sections]
    header = "# Written by `sam2-service install-service`; see docs/service.md.\n"
    return header + "\n\n".join(blocks) + "\n"


def systemd_units(config: ServiceConfig, *, executable: str | None = None,
                  working_directory: Path | None = None,
                  watchdog_sec: int = DEFAULT_WATCHDOG_SEC) -> list[tuple[str, str]]:
    """The systemd user units, as ``[(SYSTEMD_SERVICE, text), (SYSTEMD_SOCKET, text)]``.

    Args:
        config: daemon settings; the non-default ones become ``serve`` flags in ExecStart.
        executable: the Python interpreter (default :data:`sys.executable`), an absolute path.
        working_directory: the service's directory (default: the current one), where the
            default ``checkpoints/...`` path is resolved.
        watchdog_sec: ``WatchdogSec=`` in seconds; 0 turns the watchdog off.

    Raises:
        ValueError: a path cannot be written into a unit (control characters, or an
            executable name systemd refuses), or a setting is not expressible as a flag.
    """
    command = _command(config, executable)
    exec_start = " ".join([systemd_quote(command[0], executable=True),
                           *(systemd_quote(a) for a in command[1:])])
    workdir = str((working_directory or Path.cwd()).absolute())
    socket_path = str(Path(config.socket_path).expanduser().absolute())
    unit: list[tuple[str, object]] = [("Description", "SAM2 segmentation daemon (sam2-service)")]
    if DOC_PATH.exists():  # a source checkout; an installed wheel has no docs/
        unit.append(("Documentation", systemd_value(DOC_PATH.as_uri())))
    unit += [("Requires", SYSTEMD_SOCKET), ("After", SYSTEMD_SOCKET),
            ("StartLimitIntervalSec", 60), ("StartLimitBurst", 5)]
    service = [("Type", "notify"), ("NotifyAccess", "main"), ("ExecStart", exec_start),
               ("WorkingDirectory", systemd_value(workdir)),
               ("Restart", "on-failure"), ("RestartSec", 2),
               ("TimeoutStartSec", START_TIMEOUT_SEC),
               ("TimeoutStopSec", _seconds(config.shutdown_timeout + 5)),
               ("WatchdogSec", watchdog_sec)]
    sock = [("ListenStream", systemd_value(socket_path)), ("SocketMode", "0600"),
            ("RemoveOnStop", "yes")]
    return [
        (SYSTEMD_SERVICE, _unit_text([("Unit", unit), ("Service", service),
                                      ("Install", [("WantedBy", "default.target")])])),
        (SYSTEMD_SOCKET, _unit_text([("Unit", [("Description", "SAM2 segmentation daemon socket")]),
                                     ("Socket", sock),
                                     ("Install", [("WantedBy", "sockets.target")])])),
    ]


def launchd_log_dir(home: Path | None = None) -> Path:
    """``~/Library/Logs/sam2-service``: the LaunchAgent's stdout/stderr files go here."""
    return (home or Path.home()) / "Library" / "Logs" / "sam2-service"


def launchd_plist(config: ServiceConfig, *, executable: str | None = None,
                  working_directory: Path | None = None, home: Path | None = None,
                  socket_activation: bool = False) -> tuple[str, str]:
    """The LaunchAgent, as ``(f"{LAUNCHD_LABEL}.plist", xml_text)``.

    Started at login (``RunAtLoad``) and restarted when it exits with an error
    (``KeepAlive.SuccessfulExit = false``, at most every ``ThrottleInterval`` = 10 s); stdout
    and stderr go to :func:`launchd_log_dir`. ``ExitTimeOut`` (seconds between SIGTERM and
    SIGKILL) is the shutdown timeout + 5, like systemd's ``TimeoutStopSec``. With
    ``socket_activation`` launchd owns the socket (mode 0600) under :data:`LAUNCHD_SOCKET_NAME`.
    Arguments are a list, so paths need no quoting. Not run on macOS here.

    Raises:
        ValueError: a setting is not expressible as a flag (see :func:`serve_arguments`).
    """
    logs = launchd_log_dir(home)
    job: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": _command(config, executable),
        "WorkingDirectory": str((working_directory or Path.cwd()).absolute()),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": math.ceil(config.shutdown_timeout + 5),
        # Latency matters to the overlay: without this, launchd throttles agents' CPU and I/O.
        "ProcessType": "Interactive",
        "StandardOutPath": str(logs / "stdout.log"),
        "StandardErrorPath": str(logs / "stderr.log"),
    }
    if socket_activation:
        path = str(Path(config.socket_path).expanduser().absolute())
        job["Sockets"] = {LAUNCHD_SOCKET_NAME: {"SockPathName": path, "SockPathMode": 0o600}}
    return f"{LAUNCHD_LABEL}.plist", plistlib.dumps(job, sort_keys=False).decode()


def install_dir(platform: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the files go: ``$XDG_CONFIG_HOME/systemd/user`` (default ``~/.config/...``) for
    systemd, ``~/Library/LaunchAgents`` for launchd. ``HOME`` is read from ``env``.

    Raises:
        ValueError: an unknown platform.
    """
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    if platform == "systemd":
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user"
    if platform == "launchd":
        return home / "Library" / "LaunchAgents"
    raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, not {platform!r}")


def service_files(platform: str, config: ServiceConfig, env: Mapping[str, str] | None = None,
                  **options: object) -> list[tuple[Path, str]]:
    """``[(full path, text)]`` for ``platform``; ``options`` go to :func:`systemd_units` or
    :func:`launchd_plist` (``home`` for launchd defaults to ``env["HOME"]``).

    Raises:
        ValueError: an unknown platform, or what the generator raises.
    """
    env = os.environ if env is None else env
    folder = install_dir(platform, env)
    if platform == "systemd":
        pairs = systemd_units(config, **options)  # type: ignore[arg-type]
    else:
        options.setdefault("home", Path(env.get("HOME") or Path.home()))
        pairs = [launchd_plist(config, **options)]  # type: ignore[arg-type]
    return [(folder / name, text) for name, text in pairs]


def checkpoint_problem(config: ServiceConfig) -> str:
    """Why a service with ``config`` could never start for want of its checkpoint, with the
    fix, in one line; ``""`` when the checkpoint is usable or not needed (``--dummy-weights``).

    The checks are ``doctor``'s (present, a regular file, loads as a SAM2 checkpoint when torch
    is installed), not repeated here. Without its checkpoint the daemon exits at every start,
    and systemd/launchd restart it again and again (systemd until its start limit).
    """
    from .doctor import check_checkpoint

    check = check_checkpoint(config, compare=False)
    if not check.failed:
        return ""
    return f"checkpoint {check.detail}, so the service could never start; fix: {check.fix}"


def write_files(platform: str, files: Sequence[tuple[Path, str]],
                env: Mapping[str, str] | None = None) -> list[Path]:
    """Write each file (creating folders, replacing earlier versions); returns the paths.

    For launchd also creates :func:`launchd_log_dir` (launchd does not create the folders of
    ``StandardOutPath``/``StandardErrorPath``). ``HOME`` is read from ``env``.

    Raises:
        OSError: a folder or file cannot be written.
    """
    if platform == "launchd":
        env = os.environ if env is None else env
        launchd_log_dir(Path(env.get("HOME") or Path.home())).mkdir(parents=True, exist_ok=True)
    for path, text in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [path for path, _ in files]


def _enable_links(folder: Path) -> list[Path]:
    """Symlinks ``systemctl --user enable`` made in ``folder``'s ``*.wants/`` to our units."""
    ours = {str(folder / SYSTEMD_SERVICE), str(folder / SYSTEMD_SOCKET)}
    return [link for link in folder.glob("*.wants/sam2-service.*")
            if link.is_symlink() and os.readlink(link) in ours]


def installed_files(platform: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """The files :func:`remove_files` would remove: the service files that exist, and for
    systemd the ``*.wants/`` links that ``systemctl --user enable`` made to them."""
    folder = install_dir(platform, env)
    systemd = platform == "systemd"
    names = [SYSTEMD_SERVICE, SYSTEMD_SOCKET] if systemd else [f"{LAUNCHD_LABEL}.plist"]
    found = [folder / n for n in names if (folder / n).exists()]
    return found + (_enable_links(folder) if systemd and folder.is_dir() else [])


def remove_files(platform: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """Remove :func:`installed_files`; returns what was removed. Running units keep running.

    Raises:
        OSError: a file cannot be removed.
    """
    removed = installed_files(platform, env)
    for path in removed:
        path.unlink()
    return removed


def systemd_reload() -> str:
    """Run ``systemctl --user daemon-reload``; returns a one-line report, never raises."""
    if shutil.which("systemctl") is None:
        return "systemctl not found: skipped `systemctl --user daemon-reload`"
    try:
        done = subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`systemctl --user daemon-reload` failed: {exc}"
    if done.returncode:
        why = (done.stderr or done.stdout).strip().splitlines()
        return f"`systemctl --user daemon-reload` failed: {why[-1] if why else done.returncode}"
    return "ran `systemctl --user daemon-reload`"


def start_command(platform: str, plist: Path | None = None) -> str:
    """The shell command that starts the installed service."""
    if platform == "systemd":
        return f"systemctl --user daemon-reload && systemctl --user enable --now {SYSTEMD_SOCKET}"
    return f"launchctl bootstrap gui/$(id -u) {plist}"


def stop_command(platform: str) -> str:
    """The shell command that stops the running service; it also works once the files are
    gone (systemd keeps loaded units, launchd loaded jobs, until stopped)."""
    if platform == "systemd":
        return f"systemctl --user stop {SYSTEMD_SOCKET} {SYSTEMD_SERVICE}"
    return f"launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}"
