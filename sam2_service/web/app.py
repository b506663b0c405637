"""The aiohttp application: the page, its static files, ``/health`` and ``/ws/realtime``.

Security (docs/web.md, "Security"): every request's ``Host`` must name this gateway
(``localhost``, ``127.0.0.1``, ``[::1]`` or the ``--host`` it listens on, with the port it
listens on), which stops DNS rebinding; a WebSocket handshake with an ``Origin`` header is
refused unless that origin is this gateway's own (``http://localhost:PORT`` or
``http://127.0.0.1:PORT``), so other web sites open in the browser cannot drive it. Clients
that send no ``Origin`` (scripts) are accepted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..client import AsyncClient, ClientError
from ..client.interactive import error_text
from .config import WebConfig
from .session import ImageUsers, Session

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Host names that always mean this machine.
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Close code for "too many sessions" (RFC 6455 registry: 1013 Try Again Later).
TRY_AGAIN_LATER = 1013

CONFIG = web.AppKey("config", WebConfig)
USERS = web.AppKey("users", ImageUsers)
SESSIONS = web.AppKey("sessions", dict)  # session id -> its WebSocketResponse
DAEMON = web.AppKey("daemon", AsyncClient)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def own_names(config: WebConfig) -> frozenset[str]:
    """Host names this gateway answers to: the local names and the address it listens on."""
    extra = {config.host.lower().strip("[]")} - {"", "0.0.0.0", "::"}
    return LOCAL_NAMES | extra


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if sockname else None


def names_this_gateway(authority: str, request: web.Request, default_port: int = 80) -> bool:
    """True if ``authority`` (``host[:port]``) is one of our names on the port we listen on."""
    try:
        parts = urlsplit(f"//{authority}")
        port = parts.port or default_port
    except ValueError:
        return False
    return parts.hostname in own_names(request.app[CONFIG]) and port == _local_port(request)


def origin_allowed(origin: str | None, request: web.Request) -> bool:
    """No Origin (a script), or ``http://`` plus one of our names and our port."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == "http" and not parts.path and names_this_gateway(parts.netloc, request)


@web.middleware
async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests whose Host is not this gateway (DNS rebinding); add safety headers."""
    if not names_this_gateway(request.headers.get("Host", ""), request):
        return web.Response(status=421, text=f"Host {request.headers.get('Host')!r} is not this "
                            "gateway; open it at http://localhost:PORT/app or http://127.0.0.1:PORT/app")
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    return response


async def home(request: web.Request) -> web.StreamResponse:
    """``GET /``: to the page."""
    raise web.HTTPFound("/app")


async def page(request: web.Request) -> web.FileResponse:
    """``GET /app``: the click-to-segment page."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: gateway up, daemon reachable, the daemon's model; 503 without a daemon."""
    body: dict[str, Any] = {"gateway": "up", "sessions": len(request.app[SESSIONS]),
                            "maxSessions": request.app[CONFIG].max_sessions}
    try:
        info = await request.app[DAEMON].info()
    except ClientError as exc:
        body.update(ok=False, daemon={"reachable": False, "error": error_text(exc)})
        return web.json_response(body, status=503, dumps=lambda o: orjson.dumps(o).decode())
    info.pop("requestId", None)
    body.update(ok=True, daemon={"reachable": True, **info})
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def realtime(request: web.Request) -> web.StreamResponse:
    """``/ws/realtime``: one session per connection (docs/web.md, "Protocol")."""
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request):
        return web.Response(status=403, text=f"Origin {origin!r} may not use this gateway; "
                            "only its own page (http://localhost:PORT/app) may")
    config, sessions = request.app[CONFIG], request.app[SESSIONS]
    ws = web.WebSocketResponse(max_msg_size=config.max_message_bytes, heartbeat=30.0)
    await ws.prepare(request)
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            if not ws.closed:
                try:
                    await ws.send_str(orjson.dumps(message).decode())
                except ConnectionError:  # the client went away; the read loop ends the session
                    pass

    if len(sessions) >= config.max_sessions:
        await send({"type": "error", "message": f"too many sessions ({config.max_sessions}, "
                    "--max-sessions); close another tab and try again"})
        await ws.close(code=TRY_AGAIN_LATER, message=b"too many sessions")
        return ws
    session = Session(config, request.app[USERS], send)
    sessions[session.session_id] = ws
    try:
        await session.start()
        await _read_loop(ws, session)
    finally:
        del sessions[session.session_id]
        await asyncio.shield(session.close())
        await ws.close()
    return ws


async def _read_loop(ws: web.WebSocketResponse, session: Session) -> None:
    async for msg in ws:
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


def create_app(config: WebConfig) -> web.Application:
    """The gateway application for ``config``."""
    app = web.Application(middlewares=[host_check], client_max_size=1 << 20)
    daemon = AsyncClient(config.socket_path, timeout=config.timeout)
    app[CONFIG], app[DAEMON], app[SESSIONS] = config, daemon, {}
    app[USERS] = ImageUsers(daemon)
    app.router.add_get("/", home)
    app.router.add_get("/app", page)
    app.router.add_get("/health", health)
    app.router.add_get("/ws/realtime", realtime)
    app.router.add_static("/static", STATIC_DIR)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_close_daemon_client)
    return app


def run(config: WebConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shown = f"[{config.host}]" if ":" in config.host else config.host
    try:
        web.run_app(create_app(config), host=config.host, port=config.port, access_log=None,
                    print=lambda _: print(f"sam2-service web: open http://{shown}:{config.port}/app "
                                          f"(daemon socket {config.socket_path})", flush=True))
    except OSError as exc:
        print(f"sam2-service web: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
