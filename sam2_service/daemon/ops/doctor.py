"""``sam2-service doctor``: check the set-up ``serve`` would use, one line per check.

Each check is a small function returning a :class:`Check`; :func:`run_checks` runs them
in order for one :class:`~sam2_service.daemon.config.ServiceConfig` (the same flags and
environment variables as ``serve``), :func:`format_table` prints them, and :func:`main`
returns the exit code: 1 when a check FAILs (something that stops ``serve`` from
starting), 0 otherwise. A daemon already answering on the socket is ``ok`` ("already
running"): the service is usable, though a second ``serve`` on that socket would refuse.

torch is imported lazily, so the checks also run (and say so) when it is missing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import platform
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ServiceConfig
from ..inference.sam2_compat import WRITTEN_FOR, version_message
from ..serving.sockets import describe_uid, listener_uid, max_socket_path_bytes

OK, WARN, FAIL = "ok", "warn", "FAIL"
#: Oldest Python the package supports (pyproject ``requires-python``).
MIN_PYTHON = (3, 10)
#: Seconds to wait for a daemon's ping reply on the socket path.
PING_TIMEOUT_S = 3.0
#: A key prefix every SAM2 state_dict has.
SAM2_KEY_PREFIX = "image_encoder."
INSTALL_FIX = "make install"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table.

    Attributes:
        name: what was checked (short, e.g. ``checkpoint``).
        status: ``ok``, ``warn`` (works, but worth knowing) or ``FAIL`` (``serve`` would fail).
        detail: what was found.
        fix: what to do about a ``warn``/``FAIL``; empty when nothing is to be done.
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        """True for a ``FAIL``: something that stops ``serve``."""
        return self.status == FAIL


def _import(name: str) -> Any | None:
    """The module, or None when it cannot be imported (missing or broken)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken install raising anything at import
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# -- software ------------------------------------------------------------------------------
def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    """The Python version against the package's minimum (:data:`MIN_PYTHON`)."""
    text = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("python", FAIL, f"{text} ({sys.executable})",
                     f"use Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return Check("python", OK, f"{text} ({platform.python_implementation()}, {sys.executable})")


def check_torch() -> Check:
    """torch imports; its version and the CUDA version it was built for."""
    torch = _import("torch")
    if torch is None:
        return Check("torch", FAIL, "not importable", INSTALL_FIX)
    cuda = getattr(torch.version, "cuda", None)
    built = f"CUDA {cuda}" if cuda else "CPU/MPS"
    return Check("torch", OK, f"{torch.__version__} (built for {built})")


#: torch 2.N pairs with torchvision 0.(N + 15): torchvision's compatibility table
#: (github.com/pytorch/vision, "Installation"), e.g. torch 2.5 / 0.20, 2.13 / 0.28.
TORCHVISION_MINOR_OFFSET = 15
PAIR_FIX = ("reinstall torch and torchvision together from one index: .venv/bin/pip install "
            "--force-reinstall 'torch==T' 'torchvision==V' (with the same --index-url for both), "
            "or make clean && make install")


def _release(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13)``: the major and minor numbers of a version string."""
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())


def _cuda(version: str | int | None) -> tuple[int, int] | None:
    """A CUDA version as (major, minor), None for a CPU build: torch writes ``"13.0"``,
    torchvision ``13000`` (major * 1000 + minor * 10, CUDA's own integer form)."""
    if not version:
        return None
    if "." in str(version):
        major, minor = str(version).split(".")[:2]
        return int(major), int(minor)
    number = int(version)
    return number // 1000, number % 1000 // 10


def torchvision_pair_problem(torch_version: str, torchvision_version: str,
                             torch_cuda: str | int | None, torchvision_cuda: str | int | None) -> str | None:
    """Why this torch and torchvision do not go together, or None when they do.

    Args:
        torch_version, torchvision_version: ``__version__`` strings (``"2.13.0+cpu"``).
        torch_cuda, torchvision_cuda: the CUDA version each was built for (``torch.version.cuda``,
            ``"13.0"``; ``torchvision.version.cuda``, ``13000``), None for a CPU build.
    """
    t, v = _release(torch_version), _release(torchvision_version)
    if len(t) == 2 and len(v) == 2 and t[0] == 2 and v != (0, t[1] + TORCHVISION_MINOR_OFFSET):
        want = f"0.{t[1] + TORCHVISION_MINOR_OFFSET}"
        return f"torchvision {torchvision_version} does not match torch {torch_version} (it needs {want})"
    built, vision = _cuda(torch_cuda), _cuda(torchvision_cuda)
    if built != vision:
        def name(cuda: tuple[int, int] | None) -> str:
            return f"CUDA {cuda[0]}.{cuda[1]}" if cuda else "CPU"
        return (f"torch {torch_version} is built for {name(built)} but torchvision "
                f"{torchvision_version} for {name(vision)}")
    return None


def check_torchvision() -> Check:
    """torchvision imports, its compiled ops run (``torchvision.ops.nms``, which SAM2's
    automatic masks use), and its version is the one made for this torch."""
    try:
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
    except Exception as exc:
        return Check("torchvision", FAIL, f"not usable ({_first_line(exc)})", PAIR_FIX)
    version = torchvision.__version__
    problem = torchvision_pair_problem(torch.__version__, version, torch.version.cuda,
                                       getattr(torchvision.version, "cuda", None))
    if problem:
        return Check("torchvision", FAIL, problem, PAIR_FIX)
    return Check("torchvision", OK, version)


def install_check() -> int:
    """``make install``'s last step: torch, torchvision (with its ops) and sam2 import and
    go together. Prints each failing check with its fix; returns 1 if any failed, else 0."""
    failed = [c for c in (check_torch(), check_torchvision(), check_sam2()) if c.failed]
    for c in failed:
        print(f"make install: {c.name}: {c.detail}\n  fix: {c.fix}", file=sys.stderr)
    return 1 if failed else 0


def check_sam2() -> Check:
    """The sam2 package's version and that ``sam2.build_sam`` imports (it imports torch)."""
    try:
        version = importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    try:
        importlib.import_module("sam2.build_sam")
    except Exception as exc:
        return Check("sam2", FAIL, f"{version}: sam2.build_sam not importable ({_first_line(exc)})",
                     f"{INSTALL_FIX} (SAM2_BUILD_CUDA=0 pip install --no-build-isolation "
                     "sam2==1.1.0)")
    if version_message(None if version == "unknown version" else version) is not None:
        return Check("sam2", WARN, f"{version}: the daemon's use of sam2 internals was written for "
                     f"sam2 {WRITTEN_FOR}", f"{INSTALL_FIX} (sam2=={WRITTEN_FOR})")
    return Check("sam2", OK, version)


# -- hardware ------------------------------------------------------------------------------
def check_cuda() -> Check:
    """Whether torch sees CUDA, with the device name(s). Informational: never FAIL."""
    torch = _import("torch")
    if torch is None:
        return Check("cuda", WARN, "not checked: torch is missing", INSTALL_FIX)
    if not torch.cuda.is_available():
        built = getattr(torch.version, "cuda", None)
        why = (f"torch built for CUDA {built}, but no usable GPU/driver" if built
               else "CPU-only torch build")
        return Check("cuda", OK, f"not available ({why})")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("cuda", OK, "available: " + ", ".join(f"cuda:{i} {name}"
                                                      for i, name in enumerate(names)))


def check_mps() -> Check:
    """Whether torch sees Apple's MPS backend. Informational: never FAIL."""
    torch = _import("torch")
    if torch is None:
        return Check("mps", WARN, "not checked: torch is missing", INSTALL_FIX)
    mps = getattr(torch.backends, "mps", None)
    available = mps is not None and mps.is_available()
    return Check("mps", OK, "available" if available else "not available")


def check_device(config: ServiceConfig) -> Check:
    """What ``--device`` resolves to (the daemon's own rule), with the precision it implies."""
    if _import("torch") is None:
        return Check("device", WARN, f"{config.device}: not checked, torch is missing", INSTALL_FIX)
    from ..config import StartupError
    from ..inference.hardware import expand_devices, resolve_device, resolve_precision

    try:
        devices = [resolve_device(d) for d in expand_devices(config.devices)]
    except StartupError as exc:
        return Check("device", FAIL, str(exc), "pass --device auto or cpu (SAM2_SERVICE_DEVICE)")
    precision = "/".join(dict.fromkeys(resolve_precision(config.precision, d) for d in devices))
    device = ",".join(devices)
    shown = device if config.device == device else f"{config.device} -> {device}"
    return Check("device", OK, f"{shown}, precision {precision}")


# -- checkpoint ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def expected_shapes(model_config: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the model ``build_sam2(model_config)`` makes (random init
    on the CPU: about 1 s for tiny, 2 s for large; cached per config).

    Raises:
        Exception: whatever sam2/hydra/torch raise when the model cannot be built.
    """
    import torch
    from sam2.build_sam import build_sam2

    state = torch.random.get_rng_state()
    try:
        model = build_sam2(model_config, None, device="cpu")
    finally:
        torch.random.set_rng_state(state)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_state_dict(state: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> str:
    """Empty when ``state`` has exactly the ``expected`` keys and shapes; otherwise a short
    description of the difference (counts and first examples)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected)
                   if tuple(getattr(state[k], "shape", ())) != expected[k])
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})"
             for what, keys in (("missing", missing), ("unexpected", unexpected),
                                ("with other shapes", wrong)) if keys]
    return "; ".join(parts)


def _load_state_dict(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state_dict, "") or (None, why it is not a SAM2 checkpoint)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of something else, ...
        return None, f"torch.load failed: {_first_line(exc)}"
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict):
        return None, "not a SAM2 checkpoint: no 'model' state_dict in it"
    if not any(str(k).startswith(SAM2_KEY_PREFIX) for k in model):
        return None, f"not a SAM2 checkpoint: no '{SAM2_KEY_PREFIX}*' weights"
    return model, ""


def check_checkpoint(config: ServiceConfig, compare: bool = True) -> Check:
    """The checkpoint ``serve`` would load: present, its size (MB = 2**20 bytes), loadable
    with ``torch.load(weights_only=True)`` as ``{"model": state_dict}`` with SAM2 keys and,
    if ``compare``, the same keys and shapes as the model built from ``--model``'s config.
    ``--dummy-weights`` needs no checkpoint (a warning: masks are meaningless)."""
    if config.dummy_weights:
        return Check("checkpoint", WARN, "dummy weights (--dummy-weights): random init, "
                     "masks are meaningless",
                     f"for real masks: ./download_checkpoint.sh {config.model}")
    path = config.checkpoint_path
    download = f"./download_checkpoint.sh {config.model}, pass --checkpoint, or use --dummy-weights"
    if not path.exists():
        return Check("checkpoint", FAIL, f"not found: {path}", download)
    if not path.is_file():
        return Check("checkpoint", FAIL, f"not a regular file: {path}", download)
    size = f"{path}, {path.stat().st_size / 2**20:.1f} MB"
    if _import("torch") is None:
        return Check("checkpoint", WARN, f"{size}; not loaded: torch is missing", INSTALL_FIX)
    state, why = _load_state_dict(path)
    if state is None:
        return Check("checkpoint", FAIL, f"{size}: {why}", f"remove it and run {download}")
    if not compare:
        return Check("checkpoint", OK, f"{size}, {len(state)} tensors")
    try:
        diff = compare_state_dict(state, expected_shapes(config.model_config))
    except Exception as exc:
        return Check("checkpoint", WARN, f"{size}, {len(state)} tensors; not compared with "
                     f"{config.model_config}: {_first_line(exc)}")
    if diff:
        return Check("checkpoint", FAIL, f"{size}: does not match SAM2.1 {config.model}: {diff}",
                     f"is it another model size? pass the matching --model, or run {download}")
    return Check("checkpoint", OK, f"{size}, {len(state)} tensors, matches SAM2.1 {config.model}")


# -- files ---------------------------------------------------------------------------------
def _ping(path: str, timeout: float) -> dict[str, Any] | str:
    """The daemon's info reply, or what went wrong, in one line. Speaks the wire protocol
    itself (the daemon layer never imports the client): one ``info`` request, one reply."""
    from ...wire.errors import ServiceError
    from ...wire.frames import FrameDecoder, decode_message, encode_message

    decoder = FrameDecoder(1 << 20)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(encode_message({"op": "info", "requestId": "doctor"}))
            while (payload := decoder.next_frame()) is None:
                data = sock.recv(1 << 16)
                if not data:
                    return "the daemon closed the connection before replying"
                decoder.feed(data)
        reply = decode_message(payload)
    except socket.timeout:
        return f"no reply within {timeout} s"
    except OSError as exc:
        return f"cannot connect to {path}: {exc.strerror or exc}"
    except ServiceError as exc:
        return f"bad reply: {exc.message}"
    if "error" in reply:
        return f"{reply.get('code')}: {reply['error']}"
    return reply


def _probe_socket(path: str, st: os.stat_result, timeout: float) -> Check:
    """Classify an existing socket file: our daemon, stale, or another user's (named by
    the listener's uid, or the file's owner when we may not connect)."""
    me = os.geteuid()
    try:
        state, uid = listener_uid(path, timeout)
    except OSError as exc:
        return Check("socket", FAIL, f"{path}: cannot connect: {exc.strerror or exc}",
                     "choose another --socket")
    owner = uid if uid is not None else st.st_uid
    if owner != me or state == "denied":
        what = {"live": "listened on by", "denied": "a socket we may not connect to, owned by",
                "stale": "a stale socket owned by"}[state]
        return Check("socket", FAIL, f"{path}: {what} another user, {describe_uid(owner)}",
                     "serve refuses it and never removes it: choose a private --socket "
                     "(e.g. in $XDG_RUNTIME_DIR)")
    if state == "stale":
        return Check("socket", WARN, f"{path}: stale socket (nobody listening); serve replaces it",
                     "nothing to do (left by a daemon that did not shut down cleanly)")
    reply = _ping(path, timeout)
    if isinstance(reply, dict):
        return Check("socket", OK, f"{path}: already running: a daemon of {describe_uid(owner)} "
                     f"answers (model {reply.get('model')}, device {reply.get('device')}, "
                     f"pid {reply.get('pid')})")
    return Check("socket", FAIL, f"{path}: a listener of {describe_uid(owner)} does not answer "
                 f"a sam2-service ping ({reply})", "stop that program or choose another --socket")


def check_socket_folder(path: str) -> Check:
    """Who else may create files in the socket's folder. Writable by others without the
    sticky bit: FAIL-worthy in spirit but not stopping ``serve``, so ``warn`` (anyone may
    delete or replace the socket). Shared and sticky (as /tmp): ``ok`` with a note, since
    another user may still take the path before the daemon starts."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(parent)
    except OSError as exc:
        return Check("socket-folder", WARN, f"{parent}: {exc.strerror or exc}",
                     "create it or choose another --socket")
    others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if others and not st.st_mode & stat.S_ISVTX:
        return Check("socket-folder", WARN, f"{parent}: writable by other users and not sticky "
                     f"(mode {stat.S_IMODE(st.st_mode):o}): anyone may remove or replace the socket",
                     "use a private folder (e.g. $XDG_RUNTIME_DIR), or chmod +t / go-w it")
    if others:
        return Check("socket-folder", OK, f"{parent}: shared with other users (sticky, mode "
                     f"{stat.S_IMODE(st.st_mode):o}); another user may take the path first, "
                     "a private folder is safer on a shared machine")
    return Check("socket-folder", OK, f"{parent}: private to {describe_uid(st.st_uid)}")


def check_socket(path: str, timeout: float = PING_TIMEOUT_S) -> Check:
    """State of the socket path: free, live daemon (ok), stale socket (warn), wrong type
    (regular file, directory, symlink: FAIL, ``serve`` never replaces those), too long for
    ``sun_path``, or a missing/unwritable parent folder (FAIL)."""
    limit = max_socket_path_bytes()
    if len(os.fsencode(path)) > limit:
        return Check("socket", FAIL, f"{path}: {len(os.fsencode(path))} bytes, longer than the "
                     f"platform's limit of {limit}", "choose a shorter --socket")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return Check("socket", FAIL, f"{path}: folder {parent} does not exist",
                         "create it or choose another --socket")
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check("socket", FAIL, f"{path}: folder {parent} is not writable",
                         "choose another --socket")
        return Check("socket", OK, f"{path}: free")
    if stat.S_ISSOCK(st.st_mode):
        return _probe_socket(path, st, timeout)
    kind = ("symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode)
            else "regular file" if stat.S_ISREG(st.st_mode) else "not a socket")
    return Check("socket", FAIL, f"{path}: exists and is a {kind}, not a socket",
                 "remove it yourself or choose another --socket (serve never replaces it)")


def check_log(path: Path) -> Check:
    """The log file can be appended to, or created (its missing folders included)."""
    if path.exists():
        if not path.is_file():
            return Check("log", FAIL, f"{path}: exists and is not a regular file",
                         "choose another --log-file")
        if not os.access(path, os.W_OK):
            return Check("log", FAIL, f"{path}: not writable", "choose another --log-file")
        return Check("log", OK, f"{path}: writable, {path.stat().st_size / 2**20:.1f} MB")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return Check("log", FAIL, f"{path}: cannot be created, {ancestor} is not a folder",
                     "choose another --log-file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return Check("log", FAIL, f"{path}: cannot be created, {ancestor} is not writable",
                     "choose another --log-file")
    return Check("log", OK, f"{path}: will be created")


# -- running and printing ------------------------------------------------------------------
def checks_for(config: ServiceConfig) -> list[Callable[[], Check]]:
    """The checks for ``config``, in the order they are printed."""
    return [check_python, check_torch, check_torchvision, check_sam2, check_cuda, check_mps,
            lambda: check_device(config), lambda: check_checkpoint(config),
            lambda: check_socket(config.socket_path),
            lambda: check_socket_folder(config.socket_path), lambda: check_log(config.log_path)]


def run_checks(config: ServiceConfig) -> list[Check]:
    """Run every check for ``config``; a check that raises becomes a FAIL line naming it."""
    out = []
    for fn in checks_for(config):
        try:
            out.append(fn())
        except Exception as exc:  # a bug in a check must not hide the others
            out.append(Check(getattr(fn, "__name__", "check"), FAIL,
                             f"the check itself failed: {_first_line(exc)}"))
    return out


def format_table(checks: Sequence[Check]) -> str:
    """One line per check: status, name, detail and, if any, ``fix: ...`` (aligned columns)."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
        lines.append(f"{line}  fix: {c.fix}" if c.fix and c.status != OK else line)
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    """1 if any check FAILed (``serve`` would not start), else 0."""
    return 1 if any(c.failed for c in checks) else 0


def main(config: ServiceConfig) -> int:
    """Run the checks, print the table and a summary line; return :func:`exit_code`."""
    checks = run_checks(config)
    print(format_table(checks))
    failed = [c.name for c in checks if c.failed]
    print(f"\n{len(failed)} problem(s) stop `serve`: {', '.join(failed)}" if failed
          else "\nno problems stop `serve`")
    return exit_code(checks)
