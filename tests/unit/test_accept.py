"""daemon/serving/accept.py: the open-file limit and the rate-limited warning (the accept loop
itself is tested on a real socket in tests/integration/test_descriptors.py)."""

from __future__ import annotations

import logging
import resource

import pytest

from sam2_service.daemon.serving import accept
from sam2_service.daemon.serving.accept import RateLimitedWarning, raise_nofile_limit


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip(f"needs a finite hard limit of at least 64 (hard is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    try:
        with caplog.at_level(logging.INFO, "sam2_service"):
            assert raise_nofile_limit() == (32, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert any(r.getMessage() == "Open-file limit" for r in caplog.records)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_rate_limited_warning_logs_once_per_interval_and_counts_the_rest(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(accept.time, "monotonic", lambda: now[0])
    warn = RateLimitedWarning("Out of file descriptors", interval=10.0)
    with caplog.at_level(logging.WARNING, "sam2_service"):
        assert warn(n=1) is True
        assert [warn(n=i) for i in range(5)] == [False] * 5
        now[0] += 10.0
        assert warn(n=2) is True
    records = [r for r in caplog.records if r.getMessage() == "Out of file descriptors"]
    assert len(records) == 2
    assert records[0].fields == {"suppressed": 0, "n": 1}
    assert records[1].fields == {"suppressed": 5, "n": 2}
