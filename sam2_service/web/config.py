"""The gateway's settings: one frozen :class:`WebConfig`, one home for every default.

Each setting has a field here, a CLI flag of ``sam2-service web`` and an environment variable
(both in the field's metadata, from which :func:`add_flags` builds the parser), and a documented
default (docs/web.md, "Settings"). Precedence: flag, then environment variable, then default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..wire.frames import DEFAULT_SOCKET

#: Values of ``--auth`` (docs/web.md, "Security").
AUTH_MODES = ("auto", "uid", "token", "none")


def _setting(default: Any, flag: str, env: str, help: str, type: Any = str) -> Any:
    return field(default=default, metadata={"flag": flag, "env": env, "help": help, "type": type})


@dataclass(frozen=True)
class WebConfig:
    """Every setting of the gateway. Sizes in bytes (the CLI takes MB, 1 MB = 2**20 bytes)."""

    host: str = _setting("127.0.0.1", "--host", "SAM2_WEB_HOST",
                         "address to listen on (keep 127.0.0.1 unless you mean to expose it)")
    port: int = _setting(8000, "--port", "SAM2_WEB_PORT", "TCP port to listen on", int)
    socket_path: str = _setting(DEFAULT_SOCKET, "--socket", "SAM2_SERVICE_SOCKET",
                                "the daemon's Unix socket")
    timeout: float = _setting(120.0, "--timeout", "SAM2_WEB_TIMEOUT",
                              "seconds to wait for each daemon reply (never retried after it "
                              "runs out)", float)
    health_timeout: float = _setting(2.0, "--health-timeout", "SAM2_WEB_HEALTH_TIMEOUT",
                                     "seconds /health waits for the daemon's info before "
                                     "answering 503", float)
    idle_timeout: float = _setting(600.0, "--idle-timeout", "SAM2_WEB_IDLE_TIMEOUT",
                                   "seconds a WebSocket session may go without a message "
                                   "from its page before it is closed (code 4000)", float)
    auth: str = _setting("auto", "--auth", "SAM2_WEB_AUTH",
                         "who may use the gateway: uid (only the user running it, or root, "
                         "told by the peer socket's owner in /proc/net/tcp), token (a secret "
                         "printed at start, /app?token=...), none (anyone who reaches the "
                         "port), auto (uid on Linux when listening on loopback, else token)")
    max_sessions: int = _setting(16, "--max-sessions", "SAM2_WEB_MAX_SESSIONS",
                                 "most WebSocket sessions at once; more are told so and closed", int)
    max_message_bytes: int = _setting(64 * 2**20, "--max-message-mb", "SAM2_WEB_MAX_MESSAGE_MB",
                                      "largest WebSocket message accepted (MB); a larger one "
                                      "closes the connection with code 1009", int)
    max_image_pixels: int = _setting(40_000_000, "--max-image-pixels", "SAM2_WEB_MAX_IMAGE_PIXELS",
                                     "largest image (width x height) accepted, read from its header",
                                     int)

    def __post_init__(self) -> None:
        for name in ("port", "max_sessions", "max_message_bytes", "max_image_pixels"):
            value = getattr(self, name)
            low = 0 if name == "port" else 1
            if value < low or (name == "port" and value > 65535):
                meta = _meta(name)
                raise ValueError(f"{meta['flag']} / {meta['env']} out of range: {value}")
        for name in ("timeout", "health_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                meta = _meta(name)
                raise ValueError(f"{meta['flag']} / {meta['env']} must be positive: "
                                 f"{getattr(self, name)}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"--auth / SAM2_WEB_AUTH must be one of {', '.join(AUTH_MODES)}: "
                             f"{self.auth!r}")


_SCALED = {"max_message_bytes": 2**20}  # the flag and the variable are in MB


def _meta(name: str) -> Mapping[str, Any]:
    return next(f.metadata for f in dataclasses.fields(WebConfig) if f.name == name)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`WebConfig` field to ``parser`` (default None: unset; ``dest``
    the field's name)."""
    for f in dataclasses.fields(WebConfig):
        meta = f.metadata
        default = f.default // _SCALED.get(f.name, 1) if f.name in _SCALED else f.default
        parser.add_argument(meta["flag"], dest=f.name, type=meta["type"], default=None,
                            metavar=meta["flag"][2:].upper().replace("-", "_"),
                            help=f"{meta['help']} (default {default}; env {meta['env']})")


def config_from_args(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> WebConfig:
    """Flag, else environment variable, else default.

    Raises:
        ValueError: a value is invalid (the message names the flag and the variable).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(WebConfig):
        meta, scale = f.metadata, _SCALED.get(f.name, 1)
        raw = getattr(ns, f.name, None)
        if raw is None and meta["env"] in env:
            try:
                raw = meta["type"](env[meta["env"]])
            except ValueError:
                raise ValueError(f"{meta['env']}={env[meta['env']]!r} is not a valid "
                                 f"{meta['type'].__name__}") from None
        if raw is not None:
            values[f.name] = raw * scale
    return WebConfig(**values)
