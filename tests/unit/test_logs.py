"""Log formats: text by default, JSON lines with the structured fields on demand."""
import io
import json
import logging
import subprocess
import sys

import pytest

from mallard.runtime import logs


def _record(**extra) -> logging.LogRecord:
    logger = logging.getLogger("mallard.test")
    return logger.makeRecord("mallard.test", logging.INFO, __file__, 1, "applied %d events (%s)", (42, "ok"),
                             None, extra=extra)


def test_a_json_line_has_time_level_logger_message_and_the_fields_passed_with_extra():
    line = logs.JsonFormatter().format(_record(kind="cdc_batch", streams={"public.orders": 42}, rows=42, rate=1234))
    doc = json.loads(line)
    assert doc == {"time": doc["time"], "level": "INFO", "logger": "mallard.test", "message": "applied 42 events (ok)",
                   "kind": "cdc_batch", "streams": {"public.orders": 42}, "rows": 42, "rate": 1234}
    assert doc["time"].endswith("+00:00") and "T" in doc["time"]
    assert "\n" not in line


def test_a_json_line_carries_no_record_internals_and_any_value_serializes():
    from datetime import date
    from decimal import Decimal

    doc = json.loads(logs.JsonFormatter().format(_record(at=date(2026, 1, 2), total=Decimal("1.10"))))
    assert doc["at"] == "2026-01-02" and doc["total"] == "1.10"
    assert not {"args", "msg", "pathname", "lineno", "thread", "process", "exc_info"} & set(doc)


def test_a_json_line_keeps_an_exception_on_the_same_line():
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exception"]


def test_format_from_the_argument_then_the_environment_then_text(monkeypatch):
    monkeypatch.delenv("MALLARD_LOG_FORMAT", raising=False)
    assert logs.log_format() == "text"
    monkeypatch.setenv("MALLARD_LOG_FORMAT", "JSON")
    assert logs.log_format() == "json"
    assert logs.log_format("text") == "text"
    monkeypatch.setenv("MALLARD_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.log_format()


def test_text_stays_the_default_line(monkeypatch):
    monkeypatch.delenv("MALLARD_LOG_FORMAT", raising=False)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        logs.configure("INFO").info("snapshot %s: %d rows", "public.orders", 7, extra={"rows": 7})
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    line = stream.getvalue().strip()
    assert line.endswith(" INFO    mallard: snapshot public.orders: 7 rows")
    assert "rows=" not in line and "{" not in line


@pytest.mark.parametrize("how", [["--log-format", "json"], []])
def test_a_service_logs_json_lines_from_the_flag_or_the_variable(how, tmp_path):
    """A scheduler with no broker to reach: its lines, librdkafka's own included, are JSON objects."""
    import os
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    env.update({"MALLARD_HEALTH_PORT": "0", "MALLARD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                "MALLARD_REPLICATION_CONFIG": "", "MALLARD_PG_PASSWORD": "pw-not-in-logs"})
    if not how:
        env["MALLARD_LOG_FORMAT"] = "json"
    proc = subprocess.Popen([sys.executable, "-m", "mallard.services.scheduler", *how], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = [proc.stdout.readline()]  # librdkafka failing to connect, at once
    finally:
        proc.send_signal(signal.SIGTERM)
        output += list(proc.stdout)  # up to its exit
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in output if line.strip()]  # each line: one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= set(doc) for doc in lines)
    assert any(doc["logger"] == "mallard.librdkafka" and "Connection refused" in doc["message"] for doc in lines)
    assert "pw-not-in-logs" not in "".join(output)
