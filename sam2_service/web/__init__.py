"""The browser gateway: click-to-segment in a web page, on top of the daemon.

``sam2-service web`` runs an aiohttp application (:mod:`.app`) that serves a plain canvas page
(``static/``, no framework, no build step) at ``/app``, answers ``/health``, and speaks a small
JSON protocol on the WebSocket ``/ws/realtime`` (docs/web.md). Each connection is a session
(:mod:`.session`) holding one image and its points; every click is sent to the daemon through the
project's :class:`~sam2_service.client.AsyncClient` as one segment request with all the session's
points, so the mask is the daemon's answer for those points. The model stays in the daemon; this
layer imports only :mod:`sam2_service.client` and :mod:`sam2_service.wire` (no torch). Its
settings live in :mod:`.config`.
"""
