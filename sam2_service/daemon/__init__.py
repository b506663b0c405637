"""The daemon: one SAM2 model behind a Unix socket.

Settings (:mod:`.config`), the server's lifecycle and connections (:mod:`.server`), the
inference thread with its bounded queue (:mod:`.worker`), the image-embedding cache
(:mod:`.cache`), SAM2 itself (:mod:`.engine`, the only module that imports torch), prompt
checks (:mod:`.prompts`), image decoding (:mod:`.imaging`), the socket file and peer checks
(:mod:`.sockets`), systemd/launchd integration (:mod:`.systemd`, :mod:`.service_files`), JSON
logs (:mod:`.logs`) and the set-up checks (:mod:`.doctor`). It imports :mod:`sam2_service.wire`,
never :mod:`sam2_service.client`: only the server turns exceptions into error replies.
"""
