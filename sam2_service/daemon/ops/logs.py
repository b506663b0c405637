"""Logging: JSON lines to a rotating file, a short human line to stderr.

Each file line is one JSON object ``{"ts": "<ISO-8601 UTC>Z", "level": ..., "msg": ...,
<fields>}``. The messages the overlay's debugging guide searches for are kept verbatim:
"Model loaded successfully", "Server listening", "Received request", "Inference complete".
Log with :func:`event` so that the fields land as top-level keys.

A log that cannot be written (disk full, folder turned read-only, stderr gone) never stops
the daemon and never floods stderr: each handler reports the failure once, as one line on
stderr, drops records while it lasts, and says so once more when writing works again.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

LOGGER_NAME = "sam2_service"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (orjson; non-JSON values via str)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL msg key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        text = f"{base} {fields}" if fields else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _ReportOnce:
    """Mixin for a logging handler: a failure to write is one stderr line, not a traceback
    per record; a later success after a failure is one more line ("writable again")."""

    _failing = False
    _failed_now = False

    def _where(self) -> str:
        return getattr(self, "baseFilename", None) or "stderr"

    def handleError(self, record: logging.LogRecord | None) -> None:  # noqa: N802
        self._failed_now = True
        if self._failing:
            return
        self._failing = True
        exc = sys.exc_info()[1]
        _to_stderr(f"sam2-service: cannot write the log ({self._where()}): "
                   f"{type(exc).__name__}: {exc}; records are dropped until it works again")

    def flush(self) -> None:
        try:
            super().flush()  # type: ignore[misc]
        except Exception:  # noqa: BLE001 (reported like a failed record)
            self.handleError(None)  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        except Exception:  # noqa: BLE001 (closing a broken log must not stop the daemon)
            self.handleError(None)  # type: ignore[arg-type]

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)  # type: ignore[misc]  # calls handleError on failure
        if self._failing and not self._failed_now:
            self._failing = False
            _to_stderr(f"sam2-service: the log ({self._where()}) can be written again")


def _to_stderr(line: str) -> None:
    """Print ``line`` on stderr if there is one that works; never raise."""
    try:
        if sys.stderr is not None:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    except Exception:  # noqa: BLE001 (nowhere left to report to)
        pass


class SafeRotatingFileHandler(_ReportOnce, logging.handlers.RotatingFileHandler):
    """A ``RotatingFileHandler`` that reports write failures once (:class:`_ReportOnce`)
    and, with ``backupCount=0``, empties the file when it reaches ``maxBytes`` (the
    standard handler never rolls over without backups, so the file would grow unbounded)."""

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        if self.backupCount > 0:
            super().doRollover()
            return
        if self.stream:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        self.mode, mode = "w", self.mode  # truncate: no backups to keep
        try:
            self.stream = self._open()
        finally:
            self.mode = mode


class SafeStreamHandler(_ReportOnce, logging.StreamHandler):
    """The terminal handler, reporting a broken stderr once (if at all) instead of per record."""


def setup_logging(log_file: Path, level: str = "INFO", max_bytes: int = 10 * 2**20,
                  backup_count: int = 3, stderr: bool = True) -> logging.Logger:
    """Attach a :class:`SafeRotatingFileHandler` (JSON lines) and, if ``stderr``, a terminal
    handler to the package logger. ``backup_count=0`` keeps no old file: the log is emptied
    when it reaches ``max_bytes``. Creates the log file's folder. Idempotent: replaces the
    handlers of an earlier call.

    Raises:
        OSError: the log folder or file cannot be created.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    file_handler = SafeRotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
    file_handler.setFormatter(JsonLineFormatter())
    logger.addHandler(file_handler)
    if stderr:
        term = SafeStreamHandler()
        term.setFormatter(HumanFormatter())
        logger.addHandler(term)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, *,
          exc_info: Any = None, **fields: Any) -> None:
    """Log ``msg`` with ``fields`` as top-level JSON keys."""
    logger.log(level, msg, extra={"fields": fields}, exc_info=exc_info)
