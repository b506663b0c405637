"""Generated systemd units and launchd plist, and `install-service` / `uninstall-service`.

The units are checked by systemd itself (`systemd-analyze --user verify`), and, where the
tests run as root with `unshare`, by a real systemd user manager that starts them.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sam2_service import cli
from sam2_service.cli import build_parser, config_from_args
from sam2_service.daemon.config import ServiceConfig, settings
from sam2_service.daemon.ops import service_files as sf
from tests.systemd_manager import MANAGER_START, can_run_a_user_manager

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def parse_unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",))
    parser.optionxform = str  # unit keys are case-sensitive
    parser.read_string(text)
    return parser


def exec_start_argv(line: str) -> list[str]:
    """A reference reading of our ExecStart= (double quotes with \\\\ and \\" escapes only, which
    POSIX shlex reads the same way), then systemd's %% and $$ unescaping."""
    words = shlex.split(line)
    args = [w.replace("%%", "%").replace("$$", "$") for w in words[1:]]
    return [words[0].replace("%%", "%"), *args]


def verify(folder: Path, tmp_path: Path, *names: str) -> subprocess.CompletedProcess:
    run_dir = tmp_path / "xdg-run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir), "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    return subprocess.run([SYSTEMD_ANALYZE, "--user", "verify", *(str(folder / n) for n in names)],
                          capture_output=True, text=True, env=env, timeout=120)


def write_units(folder: Path, config: ServiceConfig, **options) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    units = dict(sf.systemd_units(config, **options))
    for name, text in units.items():
        (folder / name).write_text(text)
    return units


# --- systemd units -------------------------------------------------------------------------


@needs_analyze
def test_default_units_pass_systemd_analyze_verify(tmp_path):
    write_units(tmp_path / "units", ServiceConfig())
    done = verify(tmp_path / "units", tmp_path, sf.SYSTEMD_SERVICE, sf.SYSTEMD_SOCKET)
    # verify exits 0 on settings it ignores, so any message at all is a failure here
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_units_with_odd_paths_pass_verify(tmp_path):
    """The executable (a link to this interpreter) and every path contain spaces and %:
    verify fails with "not executable" if ExecStart's first word is quoted wrongly."""
    odd = tmp_path / "my env 100%"
    odd.mkdir()
    python = odd / "python"
    python.symlink_to(sys.executable)
    config = ServiceConfig(socket_path=str(odd / "s.sock"), checkpoint=odd / "ck $HOME.pt",
                           log_file=odd / "log.jsonl", model="small", warmup=False,
                           shutdown_timeout=12.5)
    units = write_units(tmp_path / "units", config, executable=str(python), working_directory=odd,
                        watchdog_sec=300)
    done = verify(tmp_path / "units", tmp_path, sf.SYSTEMD_SERVICE, sf.SYSTEMD_SOCKET)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    service = parse_unit(units[sf.SYSTEMD_SERVICE])["Service"]
    assert service["TimeoutStopSec"] == "17.5"
    assert service["WatchdogSec"] == "300"
    assert service["WorkingDirectory"] == str(odd).replace("%", "%%")
    assert exec_start_argv(service["ExecStart"]) == [
        str(python), "-m", "sam2_service", "serve", "--socket", str(odd / "s.sock"),
        "--model", "small", "--checkpoint", str(odd / "ck $HOME.pt"), "--no-warmup",
        "--log-file", str(odd / "log.jsonl"), "--shutdown-timeout", "12.5"]


@needs_analyze
def test_verify_does_catch_a_broken_unit(tmp_path):
    """The control for the two tests above: a bad value makes verify speak."""
    units = write_units(tmp_path / "units", ServiceConfig())
    (tmp_path / "units" / sf.SYSTEMD_SERVICE).write_text(
        units[sf.SYSTEMD_SERVICE].replace("Type=notify", "Type=notifyy"))
    done = verify(tmp_path / "units", tmp_path, sf.SYSTEMD_SERVICE, sf.SYSTEMD_SOCKET)
    assert "notifyy" in done.stderr


def test_service_unit_settings():
    units = dict(sf.systemd_units(ServiceConfig(), executable="/opt/py/bin/python",
                                  working_directory=Path("/srv/sam2")))
    service = parse_unit(units[sf.SYSTEMD_SERVICE])
    assert dict(service["Service"]) == {
        "Type": "notify", "NotifyAccess": "main",
        "ExecStart": "/opt/py/bin/python -m sam2_service serve",
        "WorkingDirectory": "/srv/sam2", "Restart": "on-failure", "RestartSec": "2",
        "TimeoutStartSec": "300", "TimeoutStopSec": "35", "WatchdogSec": "120"}
    unit = service["Unit"]
    assert unit["Requires"] == unit["After"] == sf.SYSTEMD_SOCKET
    assert (unit["StartLimitIntervalSec"], unit["StartLimitBurst"]) == ("60", "5")
    assert unit["Documentation"] == (REPO / "docs" / "service.md").as_uri()
    assert dict(service["Install"]) == {"WantedBy": "default.target"}
    sock = parse_unit(units[sf.SYSTEMD_SOCKET])
    assert dict(sock["Socket"]) == {"ListenStream": "/tmp/wcc-sam2.sock", "SocketMode": "0600",
                                    "RemoveOnStop": "yes"}
    assert dict(sock["Install"]) == {"WantedBy": "sockets.target"}


def test_default_executable_is_this_interpreter():
    service = parse_unit(dict(sf.systemd_units(ServiceConfig()))[sf.SYSTEMD_SERVICE])
    assert exec_start_argv(service["Service"]["ExecStart"])[0] == sys.executable


@pytest.mark.parametrize("arg, quoted", [
    ("plain", "plain"),
    ("/a b/c.pt", '"/a b/c.pt"'),
    ("50%", "50%%"),
    ("$HOME", "$$HOME"),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("it's", '"it\'s"'),
    ("", '""'),
    (";", "\\;"),
])
def test_systemd_quote(arg, quoted):
    assert sf.systemd_quote(arg) == quoted


def test_systemd_quote_executable():
    assert sf.systemd_quote("/a b/$x%/python", executable=True) == '"/a b/$x%%/python"'
    for bad in ("python", '/a"b/python', "/a\\b/python"):
        with pytest.raises(ValueError):
            sf.systemd_quote(bad, executable=True)


@pytest.mark.parametrize("path", ["/tmp/a\nb.sock", "/tmp/a\tb.sock", "/tmp/ends\\"])
def test_values_that_cannot_be_written_into_a_unit(path):
    with pytest.raises(ValueError):
        sf.systemd_units(ServiceConfig(socket_path=path))


# --- serve flags: only the non-default settings, and they read back ------------------------


def test_default_config_has_no_flags():
    assert sf.serve_arguments(ServiceConfig()) == []


def test_only_changed_settings_appear(tmp_path):
    config = ServiceConfig(model="small", checkpoint=Path("/x.pt"), dummy_weights=True,
                           max_frame_bytes=32 * 2**20)
    assert sf.serve_arguments(config) == ["--model", "small", "--checkpoint", "/x.pt",
                                          "--dummy-weights", "--max-frame-mb", "32"]


def _changed(f: dataclasses.Field, tmp_path: Path):
    if f.name == "compile":  # decoder and all need the warm-up, which this turns off
        return "auto"
    if f.metadata.get("type") is bool:
        return not f.default
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != f.default)
    if f.metadata.get("type") is Path or f.name == "socket_path":
        return (tmp_path / f.name).with_suffix(".x") if f.metadata.get("type") is Path \
            else str(tmp_path / "s.sock")
    if f.name == "device":
        return "cpu"
    return f.default + f.metadata.get("scale", 1) * 3  # ints, scaled ints and floats


def test_every_setting_round_trips_through_serve_flags(tmp_path):
    """Every field (also ones added later) changed at once, written as flags by
    serve_arguments and read back by the real `serve` parser: the same config."""
    config = ServiceConfig(**{f.name: _changed(f, tmp_path) for f in settings()})
    flags = sf.serve_arguments(config)
    assert len([a for a in flags if a.startswith("--")]) == len(settings())
    again = config_from_args(build_parser().parse_args(["serve", *flags]), env={})
    assert again == config


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = sf.serve_arguments(ServiceConfig(socket_path="s.sock", checkpoint=Path("ck/x.pt")))
    assert args == ["--socket", str(tmp_path / "s.sock"), "--checkpoint", str(tmp_path / "ck/x.pt")]


def test_sizes_that_are_not_whole_megabytes_are_refused():
    with pytest.raises(ValueError, match="MB"):
        sf.serve_arguments(ServiceConfig(max_frame_bytes=1000))


# --- launchd plist -------------------------------------------------------------------------


def test_launchd_plist_keys(tmp_path):
    name, text = sf.launchd_plist(ServiceConfig(model="large", shutdown_timeout=10),
                                  executable="/opt/py/bin/python", working_directory=Path("/srv/s"),
                                  home=tmp_path)
    assert name == f"{sf.LAUNCHD_LABEL}.plist" == "io.github.sam2-service.plist"
    job = plistlib.loads(text.encode())
    assert job == {
        "Label": sf.LAUNCHD_LABEL,
        "ProgramArguments": ["/opt/py/bin/python", "-m", "sam2_service", "serve",
                             "--model", "large", "--shutdown-timeout", "10"],
        "WorkingDirectory": "/srv/s",
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": 15,
        "ProcessType": "Interactive",
        "StandardOutPath": str(tmp_path / "Library/Logs/sam2-service/stdout.log"),
        "StandardErrorPath": str(tmp_path / "Library/Logs/sam2-service/stderr.log"),
    }


def test_launchd_plist_socket_activation(tmp_path):
    _, text = sf.launchd_plist(ServiceConfig(socket_path="/tmp/a b.sock"), home=tmp_path,
                               socket_activation=True)
    job = plistlib.loads(text.encode())
    assert job["Sockets"] == {sf.LAUNCHD_SOCKET_NAME: {"SockPathName": "/tmp/a b.sock",
                                                       "SockPathMode": 0o600}}
    assert job["ProgramArguments"][-2:] == ["--socket", "/tmp/a b.sock"]  # a list: no quoting
    _, plain = sf.launchd_plist(ServiceConfig(), home=tmp_path)
    assert "Sockets" not in plistlib.loads(plain.encode())


# --- platform and install locations --------------------------------------------------------


def test_default_platform():
    assert sf.default_platform("linux") == "systemd"
    assert sf.default_platform("darwin") == "launchd"


def test_install_dirs(tmp_path):
    assert sf.install_dir("systemd", {"HOME": "/h"}) == Path("/h/.config/systemd/user")
    xdg = {"HOME": "/h", "XDG_CONFIG_HOME": "/c"}
    assert sf.install_dir("systemd", xdg) == Path("/c/systemd/user")
    assert sf.install_dir("launchd", {"HOME": "/h"}) == Path("/h/Library/LaunchAgents")
    with pytest.raises(ValueError):
        sf.install_dir("upstart", {})


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HOME and XDG_CONFIG_HOME, no SAM2_SERVICE_* variables, and a recorded
    stand-in for `systemctl --user daemon-reload` (the real one must not be touched)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("SAM2_SERVICE_"):
            monkeypatch.delenv(name)
    reloads: list[int] = []
    monkeypatch.setattr(sf, "systemd_reload",
                        lambda: reloads.append(1) or "ran `systemctl --user daemon-reload`")
    monkeypatch.chdir(tmp_path)
    return {"root": tmp_path, "units": tmp_path / "config/systemd/user", "reloads": reloads,
            "agents": tmp_path / "home/Library/LaunchAgents"}


def test_dry_run_systemd_prints_both_files_with_headers(home, capsys):
    assert cli.main(["install-service", "--platform", "systemd", "--dry-run", "--model", "small",
                     "--checkpoint", "/x.pt"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("# FILE: ")]
    assert headers == [f"# FILE: {home['units'] / sf.SYSTEMD_SERVICE}",
                       f"# FILE: {home['units'] / sf.SYSTEMD_SOCKET}"]
    service_text, socket_text = out.split(headers[1] + "\n")
    assert service_text.startswith(headers[0] + "\n")
    service = parse_unit(service_text)["Service"]
    assert exec_start_argv(service["ExecStart"])[1:] == [
        "-m", "sam2_service", "serve", "--model", "small", "--checkpoint", "/x.pt"]
    assert service["WorkingDirectory"] == str(home["root"])
    assert parse_unit(socket_text)["Socket"]["ListenStream"] == "/tmp/wcc-sam2.sock"
    assert not home["units"].exists() and not home["reloads"]


def test_dry_run_launchd_prints_just_the_plist(home, capsys):
    assert cli.main(["install-service", "--platform", "launchd", "--dry-run", "--no-warmup"]) == 0
    job = plistlib.loads(capsys.readouterr().out.encode())
    assert job["Label"] == sf.LAUNCHD_LABEL
    assert job["ProgramArguments"] == [sys.executable, "-m", "sam2_service", "serve", "--no-warmup"]
    assert not (home["root"] / "home").exists()


def test_environment_settings_are_baked_in(home, capsys, monkeypatch):
    monkeypatch.setenv("SAM2_SERVICE_MODEL", "base_plus")
    assert cli.main(["install-service", "--platform", "launchd", "--dry-run"]) == 0
    assert plistlib.loads(capsys.readouterr().out.encode())["ProgramArguments"][-2:] == [
        "--model", "base_plus"]


@pytest.fixture
def checkpoint(home):
    """A small file that loads as a SAM2 checkpoint, where `serve` looks by default."""
    import torch

    path = home["root"] / "checkpoints" / "sam2.1_hiera_tiny.pt"
    path.parent.mkdir()
    torch.save({"model": {"image_encoder.x": torch.zeros(2)}}, path)
    return path


def test_install_and_uninstall_systemd(home, checkpoint, capsys):
    assert cli.main(["install-service", "--platform", "systemd", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    service, socket_unit = home["units"] / sf.SYSTEMD_SERVICE, home["units"] / sf.SYSTEMD_SOCKET
    assert f"wrote {service}" in out and f"wrote {socket_unit}" in out
    assert sf.start_command("systemd") in out
    assert sf.start_command("systemd") == (
        "systemctl --user daemon-reload && systemctl --user enable --now sam2-service.socket")
    assert home["reloads"] == [1]
    assert "--device cpu" in service.read_text()
    wants = home["units"] / "sockets.target.wants"  # as `systemctl --user enable` leaves it
    wants.mkdir()
    (wants / sf.SYSTEMD_SOCKET).symlink_to(socket_unit)
    (wants / "other.socket").symlink_to(socket_unit.with_name("other.socket"))

    assert cli.main(["uninstall-service", "--platform", "systemd", "--dry-run"]) == 0
    assert f"would remove {wants / sf.SYSTEMD_SOCKET}" in capsys.readouterr().out
    assert service.exists()
    assert cli.main(["uninstall-service", "--platform", "systemd"]) == 0
    out = capsys.readouterr().out
    assert not service.exists() and not socket_unit.exists()
    assert not (wants / sf.SYSTEMD_SOCKET).is_symlink() and (wants / "other.socket").is_symlink()
    assert f"removed {service}" in out and "systemctl --user stop" in out
    assert cli.main(["uninstall-service", "--platform", "systemd"]) == 0
    assert f"nothing installed in {home['units']}" in capsys.readouterr().out


def test_install_and_uninstall_launchd(home, checkpoint, capsys):
    assert cli.main(["install-service", "--platform", "launchd"]) == 0
    plist = home["agents"] / f"{sf.LAUNCHD_LABEL}.plist"
    out = capsys.readouterr().out
    assert f"wrote {plist}" in out and f"launchctl bootstrap gui/$(id -u) {plist}" in out
    assert plistlib.loads(plist.read_bytes())["Label"] == sf.LAUNCHD_LABEL
    assert (home["root"] / "home/Library/Logs/sam2-service").is_dir()
    assert home["reloads"] == []
    assert cli.main(["uninstall-service", "--platform", "launchd"]) == 0
    out = capsys.readouterr().out
    assert not plist.exists() and f"removed {plist}" in out
    assert f"launchctl bootout gui/$(id -u)/{sf.LAUNCHD_LABEL}" in out


@pytest.mark.parametrize("platform", sf.PLATFORMS)
def test_install_refuses_without_a_checkpoint_and_says_how_to_get_one(home, capsys, platform):
    """A service without its checkpoint would be restarted forever by systemd/launchd."""
    assert cli.main(["install-service", "--platform", platform, "--model", "small"]) == 1
    out, err = capsys.readouterr()
    expected = home["root"] / "checkpoints" / "sam2.1_hiera_small.pt"
    assert err.startswith(f"sam2-service: not installed: checkpoint not found: {expected}, ")
    assert "./download_checkpoint.sh small" in err and "--dummy-weights" in err
    assert len(err.splitlines()) == 1 and "wrote" not in out
    assert not home["units"].exists() and not home["agents"].exists()
    assert not home["reloads"]


def test_install_refuses_a_file_that_is_not_a_checkpoint(home, capsys):
    (home["root"] / "notes.pt").write_text("not a checkpoint")
    assert cli.main(["install-service", "--platform", "systemd", "--checkpoint", "notes.pt"]) == 1
    err = capsys.readouterr().err
    assert "not installed: checkpoint" in err and "torch.load failed" in err
    assert not home["units"].exists()


def test_dry_run_without_a_checkpoint_warns_and_prints_the_files(home, capsys):
    assert cli.main(["install-service", "--platform", "systemd", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("sam2-service: warning: checkpoint not found: ")
    assert out.count("# FILE: ") == 2 and not home["units"].exists()


def test_dummy_weights_need_no_checkpoint(home, capsys):
    assert cli.main(["install-service", "--platform", "systemd", "--dummy-weights"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and f"wrote {home['units'] / sf.SYSTEMD_SERVICE}" in out
    assert "--dummy-weights" in (home["units"] / sf.SYSTEMD_SERVICE).read_text()


def test_install_reports_a_bad_setting(home, capsys):
    assert cli.main(["install-service", "--platform", "systemd", "--socket", "/tmp/a\nb"]) == 1
    assert "control character" in capsys.readouterr().err
    assert not home["units"].exists()


def test_systemd_reload_reports_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "systemctl not found" in sf.systemd_reload()
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert sf.systemd_reload() == ("`systemctl --user daemon-reload` failed: "
                                   "Failed to connect to bus: No medium found")
    fake.write_text("#!/bin/sh\n[ \"$*\" = '--user daemon-reload' ] || exit 3\n")
    assert sf.systemd_reload() == "ran `systemctl --user daemon-reload`"


# --- a real systemd user manager -----------------------------------------------------------

_FAKE_DAEMON = """\
#!{python}
# Stands in for `python -m sam2_service serve`: records what it got, uses the passed socket.
import fcntl, json, os, signal, socket, sys, threading
sys.path.insert(0, {repo!r})
from sam2_service.daemon.ops import systemd
fds = systemd.listen_fds()
info = {{"argv": sys.argv, "cwd": os.getcwd(), "fds": fds, "watchdog": systemd.watchdog_interval(),
        "cloexec": [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for fd in fds],
        "listen_env_left": "LISTEN_FDS" in os.environ}}
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
def ping():
    while not stop.wait(info["watchdog"] / 2):
        systemd.notify("WATCHDOG=1")
threading.Thread(target=ping, daemon=True).start()
info["ready"] = systemd.notify("READY=1\\nSTATUS=fake daemon ready")
server = socket.socket(fileno=fds[0])
server.settimeout(0.2)
while not stop.is_set():
    try:
        conn, _ = server.accept()
    except socket.timeout:
        continue
    conn.sendall(json.dumps({{**info, "pid": os.getpid()}}).encode())
    conn.close()
systemd.notify("STOPPING=1")
"""

_MANAGER = MANAGER_START + """\
systemctl --user daemon-reload
systemctl --user start sam2-service.socket
stat -c '%a' "$SOCK" >"$WORK/mode"
ask() {  # connect, save the fake daemon's reply
    "$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1])
open(sys.argv[2], "wb").write(s.recv(65536))' "$SOCK" "$1"
}
ask "$WORK/first.json"
sleep 3                              # > WatchdogSec=2: only pings keep it alive
ask "$WORK/second.json"
systemctl --user show sam2-service.service -p StatusText -p NRestarts -p ActiveState >"$WORK/show"
systemctl --user stop sam2-service.socket sam2-service.service
[ -e "$SOCK" ] && echo present >"$WORK/after" || echo removed >"$WORK/after"
"""


@pytest.mark.skipif(can_run_a_user_manager() is not None,
                    reason=str(can_run_a_user_manager()))
def test_units_run_under_a_real_systemd_user_manager(tmp_path):
    import json

    work = tmp_path / "w 1%"
    (work / "run").mkdir(parents=True, mode=0o700)
    daemon = work / "fake daemon"
    daemon.write_text(_FAKE_DAEMON.format(python=sys.executable, repo=str(REPO)))
    daemon.chmod(0o755)
    sock = work / "s $x.sock"
    odd = '/c k/"q" \'s\' $HOME ${HOME}\\.pt'  # ${HOME} would be expanded if not escaped
    config = ServiceConfig(socket_path=str(sock), checkpoint=Path(odd), warmup=False)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work / "run"), "HOME": str(work),
           "XDG_CONFIG_HOME": str(work / "config"), "WORK": str(work), "SOCK": str(sock),
           "PY": sys.executable}
    sf.write_files("systemd", sf.service_files("systemd", config, env, executable=str(daemon),
                                               working_directory=work, watchdog_sec=2))
    done = subprocess.run(["unshare", "-m", "sh", "-c", _MANAGER], env=env, capture_output=True,
                          text=True, timeout=120)
    if not (work / "run/systemd/private").exists():
        pytest.skip(f"systemd --user did not start here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr + (work / "manager.log").read_text()[-2000:]
    first = json.loads((work / "first.json").read_text())
    assert first["argv"] == [str(daemon), "-m", "sam2_service", "serve", "--socket", str(sock),
                             "--checkpoint", odd, "--no-warmup"]
    assert first["cwd"] == str(work)
    assert (first["fds"], first["cloexec"], first["listen_env_left"]) == ([3], [True], False)
    assert (first["watchdog"], first["ready"]) == (2.0, True)
    second = json.loads((work / "second.json").read_text())
    assert second["pid"] == first["pid"]  # not killed by the watchdog, not restarted
    show = dict(line.split("=", 1) for line in (work / "show").read_text().splitlines())
    assert show == {"StatusText": "fake daemon ready", "NRestarts": "0", "ActiveState": "active"}
    assert (work / "mode").read_text().strip() == "600"
    assert (work / "after").read_text().strip() == "removed"
