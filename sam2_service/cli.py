"""``sam2-service``: argument parsing only; each subcommand calls the server or the client.

Subcommands: ``serve`` (the daemon), and the smoke-test client commands ``ping``,
``info`` and ``segment`` (``--overlay`` draws the mask and prompts on the image), and
``doctor`` (checks the set-up ``serve`` would use; it takes the same flags), and
``web`` (the browser gateway, :mod:`sam2_service.web`), and
``install-service`` / ``uninstall-service`` (systemd or launchd files running ``serve`` with
the given flags; :mod:`sam2_service.daemon.ops.service_files`). The ``serve``
flags are generated from :class:`~sam2_service.daemon.config.ServiceConfig`'s fields, so flags,
environment variables and defaults have one home.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .client import DEFAULT_TIMEOUT
from .daemon.config import ServiceConfig, parse_env_value, settings
from .wire.frames import DEFAULT_SOCKET


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    for f in settings():
        meta = f.metadata
        default = f.default // meta.get("scale", 1) if meta.get("scale") else f.default
        shown = "" if default is None or isinstance(default, bool) else f"default {default}; "
        text = f"turn off: {meta['help']}" if f.default is True else meta["help"]
        help_text = f"{text} ({shown}env {meta['env']})"
        if meta.get("type") is bool:  # a default-on setting's flag turns it off (--no-...)
            parser.add_argument(meta["flag"], dest=f.name, default=None, help=help_text,
                                action="store_false" if f.default else "store_true")
            continue
        kind = meta.get("type", str)
        parser.add_argument(meta["flag"], dest=f.name, type=kind, choices=meta.get("choices"),
                            default=None, metavar=meta["flag"][2:].upper().replace("-", "_"),
                            help=help_text)


def config_from_args(ns: argparse.Namespace, env: dict[str, str] | None = None) -> ServiceConfig:
    """Build the config: a flag wins over its environment variable, which wins over the default.

    Raises:
        ValueError: an environment variable or a value is invalid (message names it).
    """
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    for f in settings():
        flag_value = getattr(ns, f.name, None)
        if flag_value is not None:
            scale = f.metadata.get("scale", 1)
            values[f.name] = flag_value * scale if scale != 1 else flag_value
        elif f.metadata["env"] in env:
            values[f.name] = parse_env_value(f, env[f.metadata["env"]])
    return ServiceConfig(**values)


#: The environment variable of the client commands' ``--timeout``.
TIMEOUT_ENV = "SAM2_SERVICE_TIMEOUT"


def _seconds(text: str) -> float:
    """``--timeout``'s value: a finite number of seconds > 0 (0 would make the socket
    non-blocking, so that no reply is ever waited for)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return seconds


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=None,
                        help=f"daemon socket (env SAM2_SERVICE_SOCKET, default {DEFAULT_SOCKET})")
    parser.add_argument("--timeout", type=_seconds, default=None,
                        help=f"seconds to wait for a reply, a number > 0 (env {TIMEOUT_ENV}, "
                             f"default {DEFAULT_TIMEOUT:g}; for auto, the daemon's "
                             "--auto-timeout and a margin)")
    parser.set_defaults(client_command=True)  # parse_args applies the client's timeout rule


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas: {text!r}") from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{what} needs {' or '.join(map(str, count))} numbers: {text!r}")
    if not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers (not nan or inf): {text!r}")
    return values


def _bbox(text: str) -> list[float]:
    return _floats(text, (4,), "--bbox x1,y1,x2,y2")


def _point(text: str) -> list[float]:
    return _floats(text, (2, 3), "--point x,y[,label]")


def build_parser() -> argparse.ArgumentParser:
    """The ``sam2-service`` argument parser."""
    parser = argparse.ArgumentParser(prog="sam2-service",
                                     description="Local SAM2 segmentation daemon and its smoke-test client.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    _serve_flags(serve)
    for name, help_text in (("ping", "check that the daemon answers"),
                            ("info", "print the daemon's model, device and versions")):
        _client_flags(sub.add_parser(name, help=help_text))
    seg = sub.add_parser("segment", help="segment an image with a box and/or points")
    _client_flags(seg)
    seg.add_argument("--image", required=True, type=Path, help="image file (PNG/JPEG sent as is)")
    seg.add_argument("--bbox", type=_bbox,
                     help="box x1,y1,x2,y2 in pixels (may start outside: --bbox -50,-50,100,100)")
    seg.add_argument("--point", type=_point, action="append", default=[],
                     help="point x,y[,label] in pixels; label 1 foreground (default), 0 background; "
                          "repeatable")
    seg.add_argument("--box", type=_bbox, action="append", default=None, dest="boxes",
                     help="box x1,y1,x2,y2 of a batched box prompt, repeatable: one mask per "
                          "box, the mask written is their union (not with --bbox or --point)")
    seg.add_argument("--encoding", choices=("raw", "rle", "png"), default="raw",
                     help="mask encoding on the wire (default raw: base64 bytes); always "
                          "sent, so that the reply has the maskId that --mask-input takes")
    seg.add_argument("--multimask", action="store_true",
                     help="ask for SAM2's three candidate masks (printed with their scores)")
    seg.add_argument("--mask-input", metavar="MASKID",
                     help="refine the mask of an earlier reply on this image (its maskId)")
    seg.add_argument("--output", type=Path, help="write the mask here as a PNG (0/255)")
    seg.add_argument("--overlay", type=Path,
                     help="write the image with the mask, box and points drawn on it here (PNG)")
    doctor = sub.add_parser("doctor", help="check the set-up `serve` would use (takes its flags)")
    _serve_flags(doctor)
    _service_parsers(sub)
    _web_parser(sub)
    from .cli_auto import add_auto_parser

    add_auto_parser(sub, _client_flags)
    from .cli_track import add_track_parser

    add_track_parser(sub, _client_flags)
    from .cli_batch import add_batch_parsers

    add_batch_parsers(sub, _client_flags)
    return parser


#: Options whose value may start with "-" (a negative coordinate, documented as ``--bbox
#: -50,-50,100,100``). argparse takes such a value for an option and fails with "expected one
#: argument": its negative-number exception covers a single number ("-5"), not a list.
_COORDINATE_OPTIONS = ("--bbox", "--point", "--box")
_NEGATIVE_VALUE = re.compile(r"-(\.?\d|inf|nan)", re.IGNORECASE)  # -inf: refused as not finite


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--bbox X`` / ``--point X`` written ``--bbox=X`` where X starts with a
    minus sign and a digit (or ``inf``, ``nan``), so argparse reads X as the value. Nothing
    after ``--`` changes."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + list(argv[i:])
        if (token in _COORDINATE_OPTIONS and i + 1 < len(argv)
                and _NEGATIVE_VALUE.match(argv[i + 1])):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """:func:`build_parser` on ``argv`` (default ``sys.argv[1:]``) after
    :func:`join_negative_values`. A client command's ``timeout`` comes from the flag, else
    :data:`TIMEOUT_ENV`, else :data:`~.client.DEFAULT_TIMEOUT`; ``timeout_given`` says
    whether one of the first two set it. Exits with status 2 on bad arguments (the
    variable's included), as argparse does."""
    parser = build_parser()
    ns = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    if not getattr(ns, "client_command", False):  # serve, web, doctor, ...: their own settings
        return ns
    ns.timeout_given = ns.timeout is not None or bool(os.environ.get(TIMEOUT_ENV))
    if ns.timeout is None and ns.timeout_given:
        try:
            ns.timeout = _seconds(os.environ[TIMEOUT_ENV])
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{TIMEOUT_ENV}: {exc}")
    if ns.timeout is None:
        ns.timeout = DEFAULT_TIMEOUT
    return ns


def _web_parser(sub: Any) -> None:
    from .web.config import add_flags

    add_flags(sub.add_parser("web", help="serve the click-to-segment browser page and its "
                                        "WebSocket gateway on top of a running daemon (docs/web.md)"))


def _web(ns: argparse.Namespace) -> int:
    from .web.config import config_from_args as web_config

    try:
        config = web_config(ns)
    except ValueError as exc:
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    try:
        from .web.app import run
    except ImportError as exc:
        print(f"sam2-service web needs the [web] extra (pip install 'sam2-service[web]'): {exc}",
              file=sys.stderr)
        return 1
    return run(config)


def _service_parsers(sub: Any) -> None:
    from .daemon.ops.service_files import PLATFORMS, default_platform

    install = sub.add_parser("install-service",
                             help="write a systemd user unit (Linux) or launchd agent (macOS) "
                                  "that runs `serve` with the given flags (docs/service.md)")
    uninstall = sub.add_parser("uninstall-service", help="remove what install-service wrote")
    for p in (install, uninstall):
        p.add_argument("--platform", choices=PLATFORMS, default=default_platform(),
                       help="service manager (default: launchd on macOS, systemd elsewhere)")
        p.add_argument("--dry-run", action="store_true",
                       help="print what would be written or removed, change nothing")
    _serve_flags(install)


def _serve(ns: argparse.Namespace) -> int:
    from .daemon.ops.logs import setup_logging
    from .daemon.serving.server import run

    try:
        config = config_from_args(ns)
        setup_logging(config.log_path, config.log_level, config.log_max_bytes,
                      config.log_backup_count)
    except (ValueError, OSError) as exc:
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    return run(config)


def _unwritable(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (its folder is missing or not writable, or it
    is a folder), or None if it looks writable."""
    folder = path.parent
    if path.is_dir():
        return "it is a folder"
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


def _check_outputs(ns: argparse.Namespace) -> bool:
    """Check --output and --overlay before the request is sent; print one line if one fails."""
    for flag, path in (("--output", getattr(ns, "output", None)),
                       ("--overlay", getattr(ns, "overlay", None))):
        why = None if path is None else _unwritable(path)
        if why is not None:
            print(f"sam2-service: cannot write {flag} {path}: {why}", file=sys.stderr)
            return False
    return True


def client_failure(exc: BaseException) -> str:
    """The one line the client commands print for a failed request: the daemon's error
    reply's code and message, a refusal on the client (an image over the daemon's pixel
    limit: nothing was sent) as its message, anything else as it reads."""
    from .client import ImageTooLargeError, RequestFailed

    if isinstance(exc, ImageTooLargeError):
        return f"sam2-service: {exc.message}"
    if isinstance(exc, RequestFailed):
        return f"sam2-service: request failed: {exc.code}: {exc.message}"
    return f"sam2-service: {exc}"


def _ping_or_info(client: Any, command: str) -> int:
    import orjson

    t0 = time.perf_counter()
    reply = client.ping() if command == "ping" else client.info()
    if command == "ping":
        print(f"ok ({(time.perf_counter() - t0) * 1000:.1f} ms)")
    else:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    return 0


def _client_command(ns: argparse.Namespace) -> int:
    from .client import Client, ClientError

    if not _check_outputs(ns):
        return 1
    try:
        with Client(ns.socket, timeout=ns.timeout) as client:
            if ns.command in ("ping", "info"):
                return _ping_or_info(client, ns.command)
            t0 = time.perf_counter()
            result = client.segment(ns.image, bbox=ns.bbox, points=ns.point,
                                    encoding=ns.encoding, multimask=ns.multimask,
                                    boxes=ns.boxes, mask_input=ns.mask_input)
            round_trip = (time.perf_counter() - t0) * 1000
    except (ClientError, OSError) as exc:
        print(client_failure(exc), file=sys.stderr)
        return 1
    h, w = result.mask.shape
    coverage = float((result.mask > 0).mean()) * 100
    print(f"score={result.score:.4f} inferenceTimeMs={result.inference_time_ms:.1f} "
          f"roundTripMs={round_trip:.1f} mask={w}x{h} coverage={coverage:.1f}%")
    _print_extended(result)
    if ns.output is not None and _write_mask(ns.output, result.mask) != 0:
        return 1
    if ns.overlay is not None:
        return _write_overlay(ns, result.mask)
    return 0


def _print_extended(result: Any) -> None:
    """The protocol additions' parts of a reply (maskId, multimask candidates, boxes' masks),
    if any: its maskId and each candidate's or box's."""
    if result.mask_id is not None:
        print(f"maskId={result.mask_id}")
    for name, entries in (("candidate", result.candidates), ("box", result.masks)):
        for i, entry in enumerate(entries):
            coverage = float((entry.mask > 0).mean()) * 100
            print(f"{name}[{i}] score={entry.score:.4f} coverage={coverage:.1f}% "
                  f"maskId={entry.mask_id}")


def _write_mask(path: Path, mask: Any) -> int:
    from .wire.codecs import encode_png

    try:
        path.write_bytes(encode_png(mask))
    except OSError as exc:
        print(f"sam2-service: cannot write --output {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _write_overlay(ns: argparse.Namespace, mask: Any) -> int:
    from .client.overlay import write_overlay

    try:
        write_overlay(ns.image, mask, ns.overlay, bbox=ns.bbox, points=ns.point,
                      boxes=ns.boxes or ())
    except (ValueError, OSError) as exc:
        print(f"sam2-service: cannot write overlay {ns.overlay}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {ns.overlay}")
    return 0


def _doctor(ns: argparse.Namespace) -> int:
    from .daemon.ops.doctor import main as doctor_main

    try:
        config = config_from_args(ns)
    except ValueError as exc:
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    return doctor_main(config)


def _install_service(ns: argparse.Namespace) -> int:
    from .daemon.ops import service_files as sf

    try:
        config = config_from_args(ns)
        files = sf.service_files(ns.platform, config)
    except ValueError as exc:
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    problem = sf.checkpoint_problem(config)
    if problem and not ns.dry_run:
        print(f"sam2-service: not installed: {problem}", file=sys.stderr)
        return 1
    if problem:
        print(f"sam2-service: warning: {problem}", file=sys.stderr)
    if ns.dry_run:  # systemd: two files, each after a "# FILE:" line; launchd: the plist alone
        print("\n".join(text if ns.platform == "launchd" else f"# FILE: {path}\n{text}"
                        for path, text in files), end="")
        return 0
    try:
        written = sf.write_files(ns.platform, files)
    except OSError as exc:
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if ns.platform == "systemd":
        print(sf.systemd_reload())
    print(f"start it with: {sf.start_command(ns.platform, written[0])}")
    return 0


def _uninstall_service(ns: argparse.Namespace) -> int:
    from .daemon.ops import service_files as sf

    if ns.dry_run:
        found = sf.installed_files(ns.platform)
        for path in found:
            print(f"would remove {path}")
    else:
        try:
            found = sf.remove_files(ns.platform)
        except OSError as exc:
            print(f"sam2-service: {exc}", file=sys.stderr)
            return 1
        for path in found:
            print(f"removed {path}")
        if found and ns.platform == "systemd":
            print(sf.systemd_reload())
    if not found:
        print(f"nothing installed in {sf.install_dir(ns.platform)}")
    print(f"if the service is running, stop it: {sf.stop_command(ns.platform)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam2-service`` console script; returns the exit code."""
    ns = parse_args(argv)
    if ns.command == "serve":
        return _serve(ns)
    if ns.command == "doctor":
        return _doctor(ns)
    if ns.command == "install-service":
        return _install_service(ns)
    if ns.command == "uninstall-service":
        return _uninstall_service(ns)
    if ns.command == "web":
        return _web(ns)
    try:  # the client commands: ping, info, segment, auto
        if ns.command == "auto":
            from .cli_auto import auto_main

            return auto_main(ns, client_failure)
        if ns.command == "track":
            from .cli_track import track_main

            return track_main(ns, client_failure)
        if ns.command in ("batch", "embed"):
            from .cli_batch import batch_main

            return batch_main(ns, client_failure)
        return _client_command(ns)
    except KeyboardInterrupt:  # Ctrl-C while connecting, sending or waiting for the reply
        print("sam2-service: interrupted", file=sys.stderr)
        return 130
