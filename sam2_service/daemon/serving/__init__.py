"""Serving: the socket side of the daemon, from a connection's bytes to its replies.

:mod:`.server` owns the lifecycle (start-up checks, model loading and warm-up, the main loop,
drain with a time-out, then cancel), :mod:`.accept` the accept loop and its open-file limit,
:mod:`.connection` one client's frames in and replies out with every buffer capped,
:mod:`.dispatch` turns one frame's payload into one reply (the only place where exceptions
become error replies) and :mod:`.sockets` binds, checks and inherits the Unix socket. Model
work is handed to :mod:`sam2_service.daemon.inference`; nothing here imports torch.
"""
