"""The aiohttp application: the page, its static files, ``/health`` and ``/ws/realtime``.

Who may use it, the ``Host`` and ``Origin`` rules and the headers of every response are
:mod:`.guard`'s (docs/web.md, "Security"); the daemon's side (retries, the queue gate, the
health probe) is :mod:`.upstream`'s; one WebSocket connection is one :class:`~.session.Session`.
A session without a message from its page for ``--idle-timeout`` seconds is told so and closed
with code 4000 (the page reconnects on the next click).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..client import AsyncClient
from .config import WebConfig
from .guard import Access, guard, origin_allowed, quiet_bad_requests, resolve_access, safety_headers
from .session import ImageUsers, Session
from .upstream import Upstream, probe

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: The files under ``/static/``: those of the folder, by name (nothing else is looked up).
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file()) - {"index.html"}
#: Close code for "too many sessions" (RFC 6455 registry: 1013 Try Again Later).
TRY_AGAIN_LATER = 1013
#: Close code for a session closed after ``--idle-timeout`` (private-use range).
IDLE_CLOSE = 4000
#: In index.html: replaced by the gateway's per-start instance id.
INSTANCE_MARK = "__SAM2_INSTANCE__"

CONFIG = web.AppKey("config", WebConfig)
ACCESS = web.AppKey("access", Access)
USERS = web.AppKey("users", ImageUsers)
UPSTREAM = web.AppKey("upstream", Upstream)
SESSIONS = web.AppKey("sessions", dict)  # session id -> its WebSocketResponse
DAEMON = web.AppKey("daemon", AsyncClient)
PAGE = web.AppKey("page", str)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


async def home(request: web.Request) -> web.StreamResponse:
    """``GET /``: to the page (its query, e.g. the token, kept)."""
    raise web.HTTPFound("/app" + (f"?{request.query_string}" if request.query_string else ""))


async def page(request: web.Request) -> web.Response:
    """``GET /app``: the click-to-segment page, holding this start's instance id."""
    return web.Response(text=request.app[PAGE], content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static_file(request: web.Request) -> web.StreamResponse:
    """``GET /static/{name}``: one of :data:`STATIC_FILES`, else 404 (no path is resolved)."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound(text="404: no such file")
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.StreamResponse:
    """``GET /favicon.ico``: the page's icon (an SVG)."""
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Cache-Control": "max-age=3600"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: gateway up, daemon reachable, the daemon's info; 503 without a daemon
    (or without its answer within ``--health-timeout``)."""
    config = request.app[CONFIG]
    body: dict[str, Any] = {"gateway": "up", "sessions": len(request.app[SESSIONS]),
                            "maxSessions": config.max_sessions}
    ok, daemon = await probe(config.socket_path, config.health_timeout, request.app[UPSTREAM])
    body.update(ok=ok, daemon={"reachable": ok, **daemon})
    return _json(body, 200 if ok else 503)


def _sender(ws: web.WebSocketResponse):
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            if not ws.closed:
                try:
                    await ws.send_str(orjson.dumps(message).decode())
                except ConnectionError:  # the client went away; the read loop ends the session
                    pass

    return send


async def realtime(request: web.Request) -> web.StreamResponse:
    """``/ws/realtime``: one session per connection (docs/web.md, "Protocol")."""
    config, sessions = request.app[CONFIG], request.app[SESSIONS]
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request, config):
        return web.Response(status=403, text=f"Origin {origin!r} may not use this gateway; "
                            "only its own page (http://localhost:PORT/app) may")
    ws = web.WebSocketResponse(max_msg_size=config.max_message_bytes, heartbeat=30.0)
    await ws.prepare(request)
    send = _sender(ws)
    if len(sessions) >= config.max_sessions:
        await send({"type": "error", "message": f"too many sessions ({config.max_sessions}, "
                    "--max-sessions); close another tab and try again"})
        await ws.close(code=TRY_AGAIN_LATER, message=b"too many sessions")
        return ws
    session = Session(config, request.app[USERS], send, request.app[UPSTREAM],
                      request.app[ACCESS].instance)
    sessions[session.session_id] = ws
    try:
        await session.start()
        await _read_loop(ws, session, config.idle_timeout)
    finally:
        del sessions[session.session_id]
        await asyncio.shield(session.close())
        await ws.close()
    return ws


#: What ``receive`` gives when the connection is closing or closed.
_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


async def _read_loop(ws: web.WebSocketResponse, session: Session, idle: float) -> None:
    """Hand each message to ``session`` until the page closes, asks to close, or sends nothing
    for ``idle`` seconds (then it is told, and closed with :data:`IDLE_CLOSE`). The heartbeat's
    pongs are not messages: a page left open but unused counts as idle."""
    while True:
        try:  # wait_for bounds the whole wait: receive's own timeout restarts at every pong
            msg = await asyncio.wait_for(ws.receive(), idle)
        except asyncio.TimeoutError:
            await session.error(f"session closed after {idle:g} s without a message "
                                "(--idle-timeout); the page reconnects on the next click")
            await ws.close(code=IDLE_CLOSE, message=b"idle")
            return
        if msg.type in _ENDS:
            return
        if msg.type == WSMsgType.TEXT:
            if not await session.handle(msg.data):
                return
        elif msg.type == WSMsgType.BINARY:
            await session.error("binary messages are not part of the protocol; send JSON text")
        elif msg.type == WSMsgType.ERROR:
            log.info("session %s: %s", session.session_id, ws.exception())
            if ws.close_code is None:
                await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG)
            return


async def _close_sessions(app: web.Application) -> None:
    """On shutdown: close every WebSocket (1001 going away); their handlers clean up."""
    for ws in list(app[SESSIONS].values()):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


async def _close_daemon_client(app: web.Application) -> None:
    await app[DAEMON].close()


def create_app(config: WebConfig, access: Access | None = None) -> web.Application:
    """The gateway application for ``config`` (``access``: who may use it, by default
    :func:`~.guard.resolve_access` of ``config``)."""
    access = access or resolve_access(config)
    app = web.Application(middlewares=[guard(config, access)], client_max_size=1 << 20)
    daemon = AsyncClient(config.socket_path, timeout=config.timeout)
    app[CONFIG], app[ACCESS], app[DAEMON], app[SESSIONS] = config, access, daemon, {}
    app[USERS], app[UPSTREAM] = ImageUsers(daemon, config.timeout), Upstream()
    app[PAGE] = (STATIC_DIR / "index.html").read_text().replace(INSTANCE_MARK, access.instance)
    app.router.add_get("/", home)
    app.router.add_get("/app", page)
    app.router.add_get("/health", health)
    app.router.add_get("/ws/realtime", realtime)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/favicon.ico", favicon)
    app.on_response_prepare.append(safety_headers)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_close_daemon_client)
    return app


def _banner(config: WebConfig, access: Access) -> str:
    shown = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{shown}:{config.port}/app" + (f"?token={access.token}" if access.token else "")
    who = {"uid": f"only uid {access.uid}{' and root' if access.uid else ''} may use it",
           "token": "the token in this address is needed", "none": "anyone who reaches the "
           "port may use it (--auth none)"}[access.mode]
    return f"sam2-service web: open {url} ({who}; daemon socket {config.socket_path})"


def run(config: WebConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_bad_requests()
    app = create_app(config)
    try:
        web.run_app(app, host=config.host, port=config.port, access_log=None,
                    print=lambda _: print(_banner(config, app[ACCESS]), flush=True))
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # not aiohttp's long wording
        print(f"sam2-service web: cannot listen on {config.host}:{config.port}: "
              f"{why}; choose another port with --port or SAM2_WEB_PORT "
              "(make web PORT=8001)", file=sys.stderr)
        return 1
    return 0
