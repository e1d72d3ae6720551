"""Faults and operations: fallbacks, retries and cooldowns; reload; graceful shutdown; metrics; workers;
structured logs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import yaml

from mooltiproxy.dataset.sinks import read_jsonl

from .conftest import AUTH, KEY, ProxyFactory, http, metric, proxy_process, wait_for
from .dataset_kit import records
from .servers import free_port, read_answer
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}



# ------------------------------------------------------------------------------ fallbacks, retries


def test_fallback_when_the_target_is_down(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    url = start_proxy({"targets": {"default": "main", "main": {"url": f"http://127.0.0.1:{free_port()}", "fallbacks": ["spare"]},
                                   "spare": {"url": openai_stub[1]}}}).url
    with caplog.at_level("INFO", logger="mooltiproxy"):
        answer = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "alpha says: hi"
    (record,) = records(tmp_path / "datasets", 1)
    assert record["meta"]["target"] == "spare" and record["meta"]["tried"] == ["main (upstream_unreachable)"]
    assert any("answered by target spare after: main (upstream_unreachable)" in r.getMessage() for r in caplog.records)
    assert any("target=spare" in r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access")


def test_retries_honour_retry_after(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    stub = openai_stub[0]
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "retries": 2, "retry_backoff": 5}}}).url
    stub.fail_next = [(503, {"retry-after": "0.3"}), (429, {"retry-after": "0.2"})]
    started = time.monotonic()
    r = http.post(url + "/v1/chat/completions", json=BODY)
    assert r.status_code == 200 and len(stub.seen) == 3
    assert 0.5 <= time.monotonic() - started < 3  # the upstream's Retry-After, not the 5 s backoff


def test_a_long_retry_after_moves_on_and_the_last_failure_is_the_answer(openai_stub: Stub, openai_stub2: Stub,
                                                                        start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "retries": 3, "fallbacks": ["b"]},
                                   "b": {"url": openai_stub2[1]}}}).url
    openai_stub[0].fail_next = [(429, {"retry-after": "120"})]
    started = time.monotonic()
    r = http.post(url + "/v1/chat/completions", json=BODY)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("beta")
    assert time.monotonic() - started < 2 and len(openai_stub[0].seen) == 1
    openai_stub[0].fail_next = [(500, {})] * 4
    openai_stub2[0].fail_next = [(503, {"retry-after": "9"})]
    r = http.post(url + "/v1/chat/completions", json=BODY)
    assert r.status_code == 503 and r.json()["error"]["message"] == "beta failed with 503"
    assert r.headers["retry-after"] == "9"


def test_a_started_stream_is_never_retried(openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "retries": 2, "fallbacks": ["b"]},
                                   "b": {"url": openai_stub2[1]}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(**BODY, stream=True,  # type: ignore[call-overload]
                                                extra_body={"stub": {"chunks": ["a", "b", "c"], "drop_after": 2}}):
            pass
    assert len(openai_stub[0].seen) == 1 and not openai_stub2[0].seen


def test_a_failing_target_cools_down(openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "fallbacks": ["b"], "cooldown": 1, "cooldown_after": 2},
                                   "b": {"url": openai_stub2[1]}}}).url
    openai_stub[0].fail = (502, "bad gateway")
    for _ in range(2):
        assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 200
    assert len(openai_stub[0].seen) == 2
    for _ in range(3):  # cooling down: not even asked
        assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 200
    assert len(openai_stub[0].seen) == 2
    openai_stub[0].fail = None
    time.sleep(1.1)
    r = http.post(url + "/v1/chat/completions", json=BODY)
    assert r.json()["choices"][0]["message"]["content"].startswith("alpha") and len(openai_stub[0].seen) == 3


# ---------------------------------------------------------------------------------------- reload


def _answered_by(url: str, stub: str, within: float = 5.0) -> None:
    """Wait until chats through the proxy are answered by the stub whose replies start with ``stub``."""
    deadline = time.monotonic() + within
    while not http.post(url + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"].startswith(stub):
        assert time.monotonic() < deadline, f"the changed config was not picked up: no answer from {stub} within {within:g} s"
        time.sleep(0.1)


def test_reload_on_file_change_keeps_streams_in_flight_and_refuses_a_broken_config(
        openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    lines: list[str] = []

    def slow_stream() -> None:
        with http.stream("POST", url + "/v1/chat/completions", json={**BODY, "stream": True,
                                                                     "stub": {"chunks": [f"{i} " for i in range(12)], "delay": 0.2}}) as r:
            lines.extend(line for line in r.iter_lines() if line)

    t = threading.Thread(target=slow_stream)
    t.start()
    time.sleep(0.3)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": {"default": "b", "b": {"url": openai_stub2[1]}}}))
    _answered_by(url, "beta")
    t.join()
    assert lines[-1] == "data: [DONE]" and len(lines) == 14  # the stream begun on the old config ran to its end on it
    with caplog.at_level("ERROR", logger="mooltiproxy"):
        config.write_text("targets: {default: b, b: {url: 'not a url'}}\n")
        time.sleep(2.5)
    assert any("NOT reloaded" in r.getMessage() and "targets.b.url" in r.getMessage() for r in caplog.records)
    assert http.post(url + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"].startswith("beta")
    r = http.post(url + "/admin/reload")
    assert r.status_code == 400 and r.json()["error"]["code"] == "reload_failed"


def test_a_request_runs_on_the_config_it_arrived_with_even_if_a_reload_comes_meanwhile(
        openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """The settings are read once, when the request arrives: a reload while its body is still coming in changes
    nothing for it (its fallbacks included), and the next request gets the new config."""
    alpha, beta = openai_stub[0], openai_stub2[0]
    alpha.fail = (500, "alpha is down")
    spare = {"url": openai_stub[1]}  # the fallback: alpha as well, under another name
    server = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "fallbacks": ["spare"]}, "spare": spare}})
    body = orjson.dumps(BODY)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
                      f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body[:5])
        time.sleep(0.2)  # the request has arrived; its body has not
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(
            {"targets": {"default": "a", "a": {"url": openai_stub[1], "fallbacks": ["spare"]}, "spare": {"url": openai_stub2[1]}}}))
        assert http.post(server.url + "/admin/reload").status_code == 200
        sock.sendall(body[5:])
        answer = read_answer(sock).decode()
    # Its fallback was the old config's (alpha, failing too), not the new one's (beta).
    assert answer.startswith("HTTP/1.1 500") and "alpha is down" in answer and beta.seen == []
    assert http.post(server.url + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"] == "beta says: hi"


def test_sighup_reloads(openai_stub: Stub, openai_stub2: Stub, tmp_path: Path) -> None:
    proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": openai_stub[1]}}})
    try:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"targets": {"default": "a", "a": {"url": openai_stub2[1]}}}))
        os.utime(tmp_path / "config.yaml", (1, 1))  # the file watcher would need a new time; this is the signal's job
        proc.send_signal(signal.SIGHUP)
        _answered_by(url, "beta")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "reloaded" in out


def test_shutdown_lets_a_stream_finish_and_flushes_the_dataset(openai_stub: Stub, tmp_path: Path) -> None:
    proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"fsync": "never"}})
    lines: list[str] = []

    def stream() -> None:
        with http.stream("POST", url + "/v1/chat/completions", json={**BODY, "stream": True,
                                                                     "stub": {"chunks": [f"{i} " for i in range(10)], "delay": 0.15}}) as r:
            lines.extend(line for line in r.iter_lines() if line)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.4)
    proc.send_signal(signal.SIGTERM)
    t.join(20)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert lines[-1] == "data: [DONE]" and len(lines) == 12
    (record,) = records(tmp_path / "datasets", 1, timeout=1)
    assert record["meta"]["cut_short"] is False and record["conversations"][-1]["value"] == "".join(f"{i} " for i in range(10))


# --------------------------------------------------------------------------------------- metrics


def test_metrics_after_a_known_sequence(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "auth": {"max_failures": 2}}).url
    for _ in range(3):
        http.post(url + "/v1/chat/completions", json=BODY)
    http.post(url + "/v1/chat/completions", json={**BODY, "stub": {"status": 429}})
    http.post(url + "/v1/nope", json={})
    list(openai.OpenAI(base_url=url + "/v1", api_key=KEY).chat.completions.create(**BODY, stream=True))  # type: ignore[call-overload]
    assert httpx.get(url + "/metrics").status_code == 401  # metrics need a key too
    text = http.get(url + "/metrics").text
    assert 'mooltiproxy_requests_total{route="/v1/chat/completions",status="200",target="a"} 4' in text
    assert 'mooltiproxy_requests_total{route="/v1/chat/completions",status="429",target="a"} 1' in text
    assert 'mooltiproxy_requests_total{route="-",status="404",target="a"} 1' in text
    assert 'mooltiproxy_upstream_seconds_count{target="a"} 5' in text
    assert "mooltiproxy_overhead_seconds_count 5" in text
    assert "mooltiproxy_active_streams 0" in text
    assert "mooltiproxy_bans 0" in text
    assert "mooltiproxy_dataset_recorder_core_seconds_total 0" in text  # it had a core of its own (or idle time)
    # the recorder process reports its counts a moment after it writes
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 4, 5, "four records written")
    for _ in range(2):
        httpx.post(url + "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer wrong"})
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), headers=AUTH) as elsewhere:
        assert "mooltiproxy_bans 1" in elsewhere.get(url + "/metrics").text


# ------------------------------------------------------------------------------ workers and logs


def test_two_workers_share_a_ban_metrics_and_the_dataset(openai_stub: Stub, tmp_path: Path) -> None:
    proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "auth": {"max_failures": 3}},
                               "--workers", "2")
    try:
        pids = set()
        for _ in range(40):  # a new connection each time: the kernel spreads them over both workers
            r = httpx.post(url + "/v1/chat/completions", json=BODY, headers={**AUTH, "connection": "close"})
            assert r.status_code == 200
        # Each worker writes its snapshot every second; on a busy machine one may be later than that.
        served = 'mooltiproxy_requests_total{route="/v1/chat/completions",status="200",target="a"} 40'
        deadline = time.monotonic() + 15
        while served not in (text := http.get(url + "/metrics").text) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served in text
        for path in (tmp_path / "datasets" / "metrics").glob("worker-*.json"):
            pids.add(json.loads(path.read_text())["pid"])
        for _ in range(3):
            httpx.post(url + "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer wrong", "connection": "close"})
        refused = [httpx.post(url + "/v1/chat/completions", json=BODY, headers={**AUTH, "connection": "close"}).status_code
                   for _ in range(20)]
        assert refused == [403] * 20
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert len(pids) == 2, pids
    assert proc.returncode == 0, out
    files = list((tmp_path / "datasets").glob("*.jsonl"))
    assert len(files) == 1 and len(list(read_jsonl(files[0]))) == 40


def test_json_logs_without_secrets(openai_stub: Stub, tmp_path: Path) -> None:
    proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": openai_stub[1]}}}, "--log-format", "json")
    try:
        http.post(url + "/v1/chat/completions?token=sk-query-secret", json=BODY)
        httpx.post(url + "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer sk-wrong-secret"})
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    access = [e for e in entries if e["logger"] == "mooltiproxy.access" and e["method"] == "POST"]
    assert [e["status"] for e in access] == [200, 401]
    assert access[0]["target"] == "a" and access[0]["key"] == "master" and access[0]["path"] == "/v1/chat/completions"
    assert all({"time", "level", "message"} <= set(e) for e in entries)
    assert KEY not in out and "sk-query-secret" not in out and "sk-wrong-secret" not in out


def test_a_stalled_log_reader_never_stalls_logging() -> None:
    """A log nobody reads (a full pipe) blocks the writer thread, not the caller; what cannot wait is dropped,
    counted, and the count written once the reader is back."""
    from mooltiproxy.ops import logs

    class Stalled(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.open = threading.Event()

        def write(self, text: str) -> int:
            self.open.wait()
            return super().write(text)

    stream = Stalled()
    handler = logs.BatchedStreamHandler(stream, limit=10)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.stalled")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    limit, logs.MAX_PENDING = logs.MAX_PENDING, 10_000
    try:
        started = time.monotonic()
        for i in range(2000):  # about 30 KB, three times what may wait
            log.info("line %04d of a log nobody reads right now", i)
        handler.flush()
        assert time.monotonic() - started < 1.0  # the requests' side never waited for the reader
        assert handler.dropped > 0
        stream.open.set()
        handler.drain()
    finally:
        logs.MAX_PENDING = limit
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "line 0000 of a log" in text
    assert re.search(r"^\d+ log line\(s\) dropped: the log's reader did not keep up$", text, re.M)


def test_text_log_lines_carry_the_same_time_as_loggings_own_formatter() -> None:
    """The text formatter formats a second's part of the time once; every line still reads as logging's own."""
    from mooltiproxy.ops.logs import TextFormatter

    ours, theirs = TextFormatter(), logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    start = time.time()
    for offset in (0.0, 0.001, 0.5, 0.999, 1.0, 1.2, 61.7, -3600.25, 0.3):  # within a second, across seconds, back in time
        record = logging.LogRecord("mooltiproxy.access", logging.INFO, __file__, 0, "line %d", (1,), None)
        record.created = start + offset
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        assert ours.format(record) == theirs.format(record)
    record.created = start
    assert ours.formatTime(record, "%H:%M") == theirs.formatTime(record, "%H:%M")
