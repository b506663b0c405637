"""The daemon: one SAM2 model per device behind a Unix socket.

Settings live in :mod:`.config` (one frozen ``ServiceConfig``: a flag, an environment variable
and a default per setting). The rest is in four groups, data flowing one way:
:mod:`.serving` (socket, frames, dispatch, replies) -> :mod:`.inference` (the inference thread,
caches, SAM2's image predictor) and :mod:`.auto` (automatic masks in steps); :mod:`.ops` holds
service tooling (systemd/launchd, doctor, logs, allocator) off the request path. Only
:mod:`.serving.dispatch` turns exceptions into error replies. The daemon imports
:mod:`sam2_service.wire`, never :mod:`sam2_service.client`; ``tests/unit/test_layers.py``
holds these rules.
"""
