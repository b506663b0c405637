"""Who may use the gateway, and what every response carries (docs/web.md, "Security").

- ``Host``: every request's must name this gateway (``localhost``, ``127.0.0.1``, ``[::1]`` or
  the ``--host`` it listens on, with the port it listens on), else 421: this stops DNS
  rebinding. A WebSocket handshake's ``Origin``, when present, must be this gateway's own
  (:func:`origin_allowed`), so other web sites open in the browser cannot drive it.
- The user (``--auth``): ``uid`` accepts only connections whose peer socket belongs to the
  user running the gateway (or root), told by :func:`~.peers.peer_uid` from the kernel's TCP
  table, as the daemon's Unix socket accepts only its own user; ``token`` accepts requests
  carrying the per-start secret (``?token=`` or ``Authorization: token ...``), printed at
  start; ``none`` accepts anyone who reaches the port; ``auto`` is ``uid`` on Linux when
  listening on loopback, else ``token``. Refused: 403, before any handler runs.
- Every response the application sends (pages, files, ``/health``, handshakes, 403, 404, 421,
  500) carries ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy:
  frame-ancestors 'none'``; an exception in a handler is a short 500 (traceback in the log).
- A malformed HTTP request is one line in the log, not aiohttp's traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import peers
from .config import WebConfig

log = logging.getLogger(__name__)

#: Host names that always mean this machine.
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Headers on every response.
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff",
                  "Content-Security-Policy": "frame-ancestors 'none'"}
#: Paths a ``token`` gateway serves without the token: files that hold no secret and that the
#: page's HTML loads by plain URL.
PUBLIC_PREFIXES = ("/static/", "/favicon.ico")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    """The gateway's rule for who may use it, fixed at start.

    Attributes:
        mode: ``uid``, ``token`` or ``none`` (``auto`` resolved by :func:`resolve_access`).
        uid: the user the gateway runs as.
        token: the per-start secret (``token`` mode), else None.
        instance: a per-start secret put in the page and echoed in ``session_created``: the
            page sends its image again after a reconnect only to the instance it came from.
    """

    mode: str
    uid: int = field(default_factory=os.getuid)
    token: str | None = None
    instance: str = field(default_factory=lambda: secrets.token_urlsafe(16))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_access(config: WebConfig) -> Access:
    """The :class:`Access` of ``config.auth``: ``auto`` is ``uid`` where the kernel's TCP
    table tells peers apart (Linux) and the gateway listens on loopback only, else ``token``."""
    mode = config.auth
    if mode == "auto":
        mode = "uid" if peers.can_tell_peers() and _loopback(config.host) else "token"
    return Access(mode, token=secrets.token_urlsafe(24) if mode == "token" else None)


def own_names(config: WebConfig) -> frozenset[str]:
    """Host names this gateway answers to: the local names and the address it listens on."""
    extra = {config.host.lower().strip("[]")} - {"", "0.0.0.0", "::"}
    return LOCAL_NAMES | extra


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if sockname else None


def names_this_gateway(authority: str, request: web.Request, config: WebConfig,
                       default_port: int = 80) -> bool:
    """True if ``authority`` (``host[:port]``) is one of our names on the port we listen on."""
    try:
        parts = urlsplit(f"//{authority}")
        port = parts.port or default_port
    except ValueError:
        return False
    return parts.hostname in own_names(config) and port == _local_port(request)


def origin_allowed(origin: str | None, request: web.Request, config: WebConfig) -> bool:
    """No Origin (a script), or ``http://`` plus one of our names and our port."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return (parts.scheme == "http" and not parts.path
            and names_this_gateway(parts.netloc, request, config))


def _uid_refusal(request: web.Request, access: Access) -> str | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    own = transport.get_extra_info("sockname") if transport else None
    uid = peers.peer_uid(peer, own) if peer and own else None
    if uid in (access.uid, 0):
        return None
    who = "a socket of no local user (another machine?)" if uid is None else f"uid {uid}"
    return (f"this gateway serves only the user who runs it (uid {access.uid}); this "
            f"connection is {who}. Run your own gateway (sam2-service web --port ...)")


def _token_refusal(request: web.Request, access: Access) -> str | None:
    if request.path.startswith(PUBLIC_PREFIXES):
        return None
    given = request.query.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("token "):
        given = header[6:].strip()
    if access.token and hmac.compare_digest(given.encode(), access.token.encode()):
        return None
    return ("this gateway needs its token: open the address sam2-service web printed at start "
            "(http://HOST:PORT/app?token=...)")


def refusal(request: web.Request, config: WebConfig, access: Access) -> web.Response | None:
    """The 421 or 403 answer for a request that may not be served, else None."""
    host = request.headers.get("Host", "")
    if not names_this_gateway(host, request, config):
        return web.Response(status=421, text=f"Host {host!r} is not this gateway; open it at "
                            "http://localhost:PORT/app or http://127.0.0.1:PORT/app")
    why = (_uid_refusal(request, access) if access.mode == "uid"
           else _token_refusal(request, access) if access.mode == "token" else None)
    if why is not None:
        log.warning("refused %s %s from %s: %s", request.method, request.path[:100],
                    request.remote, why.split(";")[0])
        return web.Response(status=403, text=why)
    return None


def guard(config: WebConfig, access: Access) -> Callable:
    """The middleware: :func:`refusal`'s answer, or the handler's; a handler's exception is a
    short 500 (the traceback goes to the log)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request, config, access)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path[:100])
            return web.Response(status=500, text="500: the gateway failed on this request; "
                                "its log has the details")

    return middleware


async def safety_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: :data:`SAFETY_HEADERS` on every response, errors included."""
    for name, value in SAFETY_HEADERS.items():
        response.headers.setdefault(name, value)


class OneLineBadRequests(logging.Filter):
    """On ``aiohttp.server``: a malformed HTTP request is logged as one line (its status and
    reason), without the parser's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())[:200]
            record.msg = f"{record.getMessage()}: bad HTTP request ({exc.code}): {reason}"
            record.args = ()
            record.exc_info, record.exc_text, record.levelno = None, None, logging.INFO
            record.levelname = "INFO"
        return True


def quiet_bad_requests() -> None:
    """Install :class:`OneLineBadRequests` on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests())
