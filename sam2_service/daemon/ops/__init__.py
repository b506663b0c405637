"""Operations: what runs the daemon as a service and tells a person how it is doing.

:mod:`.systemd` (sd_notify, the watchdog, socket activation, launchd's sockets),
:mod:`.service_files` (systemd units and launchd plists, generated in one place),
:mod:`.doctor` (the set-up checks of ``sam2-service doctor``), :mod:`.logs` (JSON log lines
and the rotating log file) and :mod:`.memory` (the allocator's tuning). None of it is on the
request path except the log calls.
"""
