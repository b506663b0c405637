"""JSON-lines logging: line format, fields, levels and rotation."""

from __future__ import annotations

import logging
import logging.handlers
import re

import orjson
import pytest

from sam2_service.daemon.ops import logs
from sam2_service.daemon.ops.logs import LOGGER_NAME, event, setup_logging

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def clean_logger():
    """Leave the package logger as it was found (no handlers left open on tmp files)."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handlers, level, propagate = saved
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = propagate


def read_lines(path):
    for h in logging.getLogger(LOGGER_NAME).handlers:
        h.flush()
    return [orjson.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_event_writes_one_json_line(tmp_path, clean_logger):
    log_file = tmp_path / "logs" / "service.log"  # folder created by setup_logging
    logger = setup_logging(log_file, stderr=False)
    event(logger, "Inference complete", requestId="r1", score=0.5)
    lines = read_lines(log_file)
    assert len(lines) == 1
    line = lines[0]
    assert set(line) == {"ts", "level", "msg", "requestId", "score"}
    assert TS.match(line["ts"]), line["ts"]
    assert line["level"] == "INFO"
    assert line["msg"] == "Inference complete"
    assert line["requestId"] == "r1"
    assert line["score"] == 0.5


def test_setup_logging_returns_package_logger_without_propagation(tmp_path, clean_logger):
    logger = setup_logging(tmp_path / "a.log", stderr=False)
    assert logger.name == "sam2_service"
    assert logger.propagate is False
    assert len(logger.handlers) == 1
    assert isinstance(logger.handlers[0], logging.handlers.RotatingFileHandler)


def test_setup_logging_with_stderr_adds_terminal_handler(tmp_path, clean_logger, capsys):
    logger = setup_logging(tmp_path / "a.log", stderr=True)
    assert len(logger.handlers) == 2
    event(logger, "Server listening", socket="/tmp/s.sock")
    err = capsys.readouterr().err
    assert "Server listening" in err and "socket=/tmp/s.sock" in err


def test_setup_logging_is_idempotent(tmp_path, clean_logger):
    setup_logging(tmp_path / "a.log", stderr=False)
    logger = setup_logging(tmp_path / "b.log", stderr=False)
    assert len(logger.handlers) == 1
    event(logger, "second")
    assert read_lines(tmp_path / "b.log")[0]["msg"] == "second"
    assert (tmp_path / "a.log").read_text() == ""


def test_level_filtering(tmp_path, clean_logger):
    logger = setup_logging(tmp_path / "a.log", level="WARNING", stderr=False)
    event(logger, "dropped")
    event(logger, "kept", level=logging.ERROR, code="internal")
    lines = read_lines(tmp_path / "a.log")
    assert [(l["msg"], l["level"]) for l in lines] == [("kept", "ERROR")]
    assert lines[0]["code"] == "internal"


def test_non_json_values_logged_as_str(tmp_path, clean_logger):
    logger = setup_logging(tmp_path / "a.log", stderr=False)
    event(logger, "path", path=tmp_path, obj=object)
    line = read_lines(tmp_path / "a.log")[0]
    assert line["path"] == str(tmp_path)
    assert line["obj"] == str(object)


def test_exception_included(tmp_path, clean_logger):
    logger = setup_logging(tmp_path / "a.log", stderr=False)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        event(logger, "failed", level=logging.ERROR, exc_info=exc)
    line = read_lines(tmp_path / "a.log")[0]
    assert "RuntimeError: boom" in line["exception"]
    assert "\n" not in (tmp_path / "a.log").read_text().rstrip("\n")


def test_rotation_at_max_bytes(tmp_path, clean_logger):
    log_file = tmp_path / "r.log"
    logger = setup_logging(log_file, max_bytes=500, backup_count=2, stderr=False)
    for i in range(200):
        event(logger, "Received request", requestId=f"r{i:04d}")
    for h in logger.handlers:
        h.flush()
    assert (tmp_path / "r.log.1").exists()
    assert (tmp_path / "r.log.2").exists()
    assert not (tmp_path / "r.log.3").exists()  # backups capped at backup_count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.log", "r.log.1", "r.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 500
        for line in p.read_text().splitlines():
            assert orjson.loads(line)["msg"] == "Received request"
    # the newest line is in the live file
    assert read_lines(log_file)[-1]["requestId"] == "r0199"


def test_human_formatter_line():
    record = logging.LogRecord(LOGGER_NAME, logging.WARNING, __file__, 1, "hello", None, None)
    record.fields = {"a": 1, "b": "x"}
    text = logs.HumanFormatter().format(record)
    assert re.match(r"^\d\d:\d\d:\d\d WARNING hello a=1 b=x$", text), text


def test_no_backups_keeps_the_file_under_the_size_limit(tmp_path, clean_logger):
    """--log-backups 0: the standard handler never rolls over; ours empties the file."""
    log_file = tmp_path / "n.log"
    logger = setup_logging(log_file, max_bytes=500, backup_count=0, stderr=False)
    for i in range(200):
        event(logger, "Received request", requestId=f"r{i:04d}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.log"]
    assert log_file.stat().st_size <= 500
    assert read_lines(log_file)[-1]["requestId"] == "r0199"


class _FailingStream:
    """A stream whose writes raise OSError while ``failing`` is set."""

    def __init__(self):
        self.failing = True
        self.lines = []

    def write(self, text):
        if self.failing:
            raise OSError(28, "No space left on device")
        self.lines.append(text)

    def flush(self):
        pass

    def seek(self, *args):
        return 0

    def tell(self):
        return 0


def test_write_failure_reported_once_then_recovery_once(tmp_path, clean_logger, capsys):
    logger = setup_logging(tmp_path / "a.log", stderr=False)
    handler = logger.handlers[0]
    stream = _FailingStream()
    handler.setStream(stream)
    for i in range(50):
        event(logger, "Received request", requestId=f"r{i}")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "cannot write the log" in err[0] and "No space left on device" in err[0]
    stream.failing = False
    event(logger, "Inference complete")
    event(logger, "Inference complete")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "can be written again" in err[0], err
    assert len(stream.lines) == 2
    stream.failing = True
    for _ in range(10):
        event(logger, "Received request")
    assert len(capsys.readouterr().err.splitlines()) == 1  # a new failure, reported anew


@pytest.mark.skipif(not logs.Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_log_on_dev_full_prints_one_line(clean_logger, capsys):
    logger = setup_logging(logs.Path("/dev/full"), stderr=False)
    for i in range(100):
        event(logger, "Received request", requestId=f"r{i}")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err[:5]
    assert "/dev/full" in err[0]


def test_failing_rollover_prints_one_line(tmp_path, clean_logger, capsys):
    """Rollover renames files in the folder (as when the folder turned read-only, which root
    would ignore): a directory where the backup goes makes every rollover fail. One line,
    not a traceback per record."""
    logger = setup_logging(tmp_path / "r.log", max_bytes=300, backup_count=2, stderr=False)
    (tmp_path / "r.log.1").mkdir()
    (tmp_path / "r.log.1" / "x").touch()
    for i in range(100):
        event(logger, "Received request", requestId=f"r{i:04d}")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err[:5]
    assert "cannot write the log" in err[0]


def test_negative_backups_refused():
    from sam2_service.daemon.config import ServiceConfig

    with pytest.raises(ValueError, match="log_backup_count"):
        ServiceConfig(log_backup_count=-1)
