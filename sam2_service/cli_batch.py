"""``sam2-service batch`` and ``sam2-service embed``: thin layers over :mod:`sam2_service.batch`.

``batch INPUT... --output DIR`` takes ``auto``'s flags (the same settings and defaults, from
:func:`~.cli_auto.add_auto_settings`), ``--overlay``, ``--force``, ``--quiet`` and
``--engine daemon|ray``; for Ray also ``--ray-address``, ``--workers``, ``--gpus-per-worker``,
``--ray-num-cpus`` and the model's ``--model``, ``--checkpoint``, ``--device``,
``--dummy-weights`` as for ``serve``. It shows a tqdm bar (images, images per second, ETA,
the current file), names each failed image on stderr, and ends with one summary line.
Exit codes: 0 all done; 3 some images failed (listed); 1 nothing could run (no daemon, bad
arguments, output not writable); 130 interrupted (Ctrl-C finishes the image in flight and
keeps the outputs valid; a second Ctrl-C stops at once). This module is the composition root
that hands the daemon's model actor (``sam2_service.daemon.batch.actor.AutoActor``) to the
Ray engine.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .cli_auto import add_auto_settings
from .wire.auto import AUTO_FIELDS

#: Exit code when some images failed.
EXIT_FAILED_IMAGES = 3
#: Exit code after Ctrl-C (as the other commands).
EXIT_INTERRUPTED = 130


def add_batch_parsers(sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``batch`` and ``embed`` subcommands."""
    p = sub.add_parser("batch", help="segment every object of many images: label maps + COCO")
    client_flags(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), glob patterns, @list.txt")
    p.add_argument("--output", required=True, type=Path, help="output folder DIR")
    p.add_argument("--overlay", action="store_true", help="also write DIR/overlays/")
    p.add_argument("--force", action="store_true", help="redo images already done")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.add_argument("--engine", choices=("daemon", "ray"), default="daemon",
                   help="daemon: the running daemon (default); ray: Ray Data and an actor "
                        "pool, one model per actor, no daemon")
    ray = p.add_argument_group("ray engine")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    ray.add_argument("--workers", type=int, help="actors (default: one per GPU, else 1)")
    ray.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default 1 with GPUs)")
    ray.add_argument("--ray-num-cpus", type=int, help="CPUs of a local Ray (default all)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="CPUs per actor (default 1; Ray sets its torch threads to match)")
    ray.add_argument("--model", default="tiny",
                     choices=("tiny", "small", "base_plus", "large"), help="as for serve")
    ray.add_argument("--checkpoint", type=Path, help="as for serve")
    ray.add_argument("--device", default="auto", help="as for serve (default auto)")
    ray.add_argument("--dummy-weights", action="store_true", help="as for serve")
    add_auto_settings(p)
    e = sub.add_parser("embed", help="have the daemon embed many images ahead of clicking")
    client_flags(e)
    e.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), glob patterns, @list.txt")
    e.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")


class _Bar:
    """The tqdm bar and the failed images' lines (on stderr)."""

    def __init__(self, total_hint: str, quiet: bool) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.quiet = quiet
        self.bar: Any = None
        self.unit = total_hint

    def __call__(self, p: Any) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=p.total, unit="img", disable=self.quiet, file=sys.stderr,
                                 dynamic_ncols=True, desc=self.unit)
        if p.failure is not None:
            self.write(f"sam2-service: {p.failure.path}: {p.failure.code}: {p.failure.message}")
        self.bar.set_postfix_str(p.current or "", refresh=False)
        self.bar.update(p.done + p.skipped + p.failed - self.bar.n)

    def write(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _on_sigint(cancel: threading.Event, bar: _Bar) -> Any:
    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set():  # every file is written atomically, the manifest line by line:
            print("sam2-service: interrupted", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)  # leaving now keeps them valid; no wait for threads
        cancel.set()
        bar.write("sam2-service: interrupted: finishing the image in flight "
                  "(Ctrl-C again to stop at once)")
    return signal.signal(signal.SIGINT, handler)


def _engine_options(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.engine != "ray":
        return {}
    from .daemon.batch.actor import AutoActor

    opts: dict[str, Any] = {"actor_class": AutoActor, "address": ns.ray_address,
                            "workers": ns.workers, "gpus_per_worker": ns.gpus_per_worker,
                            "num_cpus": ns.ray_num_cpus, "cpus_per_worker": ns.cpus_per_worker,
                            "model": ns.model, "device": ns.device,
                            "dummy_weights": ns.dummy_weights, "warmup": False}
    if ns.checkpoint is not None:
        opts["checkpoint"] = ns.checkpoint.absolute()
    return opts


def _summary_line(s: Any, command: str) -> str:
    text = f"done={s.done} skipped={s.skipped} failed={len(s.failed)}"
    if command == "batch":
        text += f" objects={s.objects}"
    text += f" seconds={s.seconds:.1f}"
    return text + (f" output={s.output}" if command == "batch" else "")


def _call(ns: argparse.Namespace, progress: Any, cancel: threading.Event) -> Any:
    timeout = ns.timeout if getattr(ns, "timeout_given", False) else None
    if ns.command == "embed":
        from .batch.embed import embed

        return embed(ns.inputs, socket_path=ns.socket, progress=progress, cancel=cancel,
                     timeout=timeout)
    from .batch import run

    settings = {name: getattr(ns, name) for _, (name, *_) in AUTO_FIELDS.items()}
    settings.update(tile_shape=ns.tile, halo=ns.halo)
    return run(ns.inputs, ns.output, settings, engine=ns.engine, socket_path=ns.socket,
               force=ns.force, overlay=ns.overlay, progress=progress, cancel=cancel,
               timeout=timeout, **_engine_options(ns))


def _report(ns: argparse.Namespace, summary: Any) -> int:
    if not ns.quiet:
        print(_summary_line(summary, ns.command))
    if summary.failed:
        print(f"sam2-service: {len(summary.failed)} image(s) failed:", file=sys.stderr)
        for f in summary.failed:
            print(f"  {f.path}: {f.code}: {f.message}", file=sys.stderr)
    if summary.cancelled:
        print("sam2-service: interrupted; run the same command again to finish",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED_IMAGES if summary.failed else 0


def batch_main(ns: argparse.Namespace, failure: Callable[[BaseException], str] = str) -> int:
    """Run ``sam2-service batch`` or ``embed``; returns the exit code."""
    from .client import ClientError

    logging.getLogger("sam2_service.batch").addHandler(_StderrHandler())
    cancel = threading.Event()
    bar = _Bar(ns.command, ns.quiet)
    previous = _on_sigint(cancel, bar)
    try:
        summary = _call(ns, bar, cancel)
    except (ValueError, TypeError) as exc:
        bar.close()
        print(f"sam2-service: {exc}", file=sys.stderr)
        return 1
    except (ClientError, OSError) as exc:
        bar.close()
        print(failure(exc), file=sys.stderr)
        return 1
    except ImportError as exc:
        bar.close()
        print(f"sam2-service: the ray engine needs Ray ({exc}): pip install "
              "'sam2-service[batch]' (make install adds it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    return _report(ns, summary)


class _StderrHandler(logging.Handler):
    """The batch package's warnings as ``sam2-service: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"sam2-service: {record.getMessage()}", file=sys.stderr)
