"""Several instances as one: bans, key limits, cooldowns and reloads shared through Redis, the dataset
written into one PostgreSQL table, and each surviving the loss of its server.

Every instance is a real ``mooltiproxy serve`` process on its own port; Redis and PostgreSQL are private
servers from the Debian packages (``tests/services.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import KEY, http, metric, proxy_process, wait_for
from .services import PostgresServer, RedisServer
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# ------------------------------------------------------------------------------------ servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="mooltiproxy-redis-"))
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    if redis_server.proc is None:  # a test before stopped it
        redis_server.start()
    redis_server.flush()
    return redis_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's own temporary folder: as root the server runs as `postgres`, who cannot enter it.
    directory = Path(tempfile.mkdtemp(prefix="mooltiproxy-pg-"))
    server = PostgresServer(directory).init().start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> PostgresServer:
    if postgres_server.proc is None:
        postgres_server.start()
    postgres_server.query("DROP TABLE IF EXISTS records")
    return postgres_server


Instances = Callable[..., list[str]]


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Instances]:
    """Start proxy processes, each in its own folder; all are stopped (and must exit 0) at the test's end."""
    running: list[tuple[subprocess.Popen[str], Path]] = []

    def start(config: dict[str, Any], n: int = 2, *args: str, env: dict[str, str] | None = None) -> list[str]:
        urls = []
        for _ in range(n):
            folder = tmp_path / f"instance{len(running)}"
            folder.mkdir()
            proc, url = proxy_process(folder, config, *args, env=env)
            running.append((proc, folder))
            urls.append(url)
        return urls

    yield start
    for proc, folder in running:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        (folder / "output.log").write_text(out)
        assert proc.returncode == 0, out[-3000:]


def output(tmp_path: Path, index: int) -> str:
    return (tmp_path / f"instance{index}" / "output.log").read_text()


def from_(address: str, key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "x-forwarded-for": address}


# ------------------------------------------------------------------------------------ Redis


def shared(url: str, upstream: str, **more: Any) -> dict[str, Any]:
    return {"targets": {"default": "a", "a": {"url": upstream}}, "state": url,
            "server": {"trusted_proxies": ["127.0.0.1/32"]}, **more}


def test_a_ban_earned_at_one_instance_is_enforced_at_the_other_at_once(redis: RedisServer, openai_stub: Stub,
                                                                       instances: Instances) -> None:
    a, b = instances(shared(redis.url, openai_stub[1], auth={"max_failures": 3, "ban": 60}))
    guesser, other = "203.0.113.7", "203.0.113.8"
    assert http.post(b + "/v1/chat/completions", json=BODY, headers=from_(guesser)).status_code == 200
    for _ in range(3):
        assert httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_(guesser, "wrong")).status_code == 401
    # The very next request, at the other instance, with the right key.
    refused = httpx.post(b + "/v1/chat/completions", json=BODY, headers=from_(guesser))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "address_banned"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert httpx.post(b + "/v1/chat/completions", json=BODY, headers=from_(other)).status_code == 200
    # Both list it; lifting it at one lifts it at both.
    for url in (a, b):
        assert [ban["address"] for ban in http.get(url + "/admin/bans").json()["bans"]] == [guesser]
    assert http.delete(b + f"/admin/bans/{guesser}").status_code == 200
    wait_for(lambda: httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_(guesser)).status_code == 200, 2,
             "the ban lifted at one instance is lifted at the other")


def test_a_response_stored_at_one_instance_is_continued_at_the_other(redis: RedisServer, openai_stub: Stub,
                                                                      instances: Instances) -> None:
    """/v1/responses' stored responses live in Redis with a shared state: previous_response_id works whichever instance
    the next turn reaches, and only for the key that made it."""
    import openai

    a, b = instances(shared(redis.url, openai_stub[1], responses={"retention": "1h"}))
    first = openai.OpenAI(base_url=a + "/v1", api_key=KEY, max_retries=0).responses.create(model="m", input="I am Ann.")
    other = openai.OpenAI(base_url=b + "/v1", api_key=KEY, max_retries=0)
    assert other.responses.retrieve(first.id).output_text == first.output_text
    other.responses.create(model="m", input="Who am I?", previous_response_id=first.id)
    sent = openai_stub[0].seen[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"] and sent[0]["content"] == "I am Ann."
    import redis as redis_client

    ttl = redis_client.Redis.from_url(redis.url).pttl(f"mooltiproxy:resp:{first.id}")
    assert 3_500_000 < ttl <= 3_600_000  # kept for responses.retention


def test_a_logout_at_one_instance_ends_the_session_at_the_other(redis: RedisServer, openai_stub: Stub,
                                                                 instances: Instances) -> None:
    from .test_ui import csrf, log_in

    a, b = instances(shared(redis.url, openai_stub[1]))
    with httpx.Client(base_url=a) as browser:
        log_in(browser)
        session = browser.cookies["mooltiproxy_ui"]
        assert httpx.get(b + "/ui/threads", cookies={"mooltiproxy_ui": session}).status_code == 200  # one session, both instances
        assert browser.post("/ui/logout", data={"csrf": csrf(browser)}).status_code == 303
    wait_for(lambda: httpx.get(b + "/ui/threads", cookies={"mooltiproxy_ui": session}).status_code == 303, 2,
             "the session logged out at one instance is refused at the other")


def test_failed_keys_count_across_instances(redis: RedisServer, openai_stub: Stub, instances: Instances) -> None:
    a, b = instances(shared(redis.url, openai_stub[1], auth={"max_failures": 4}))
    for url in (a, b, a, b):  # two failures at each: four in all
        assert httpx.post(url + "/v1/chat/completions", json=BODY, headers=from_("198.51.100.4", "wrong")).status_code == 401
    assert httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_("198.51.100.4")).status_code == 403


def test_key_rate_limits_hold_across_instances(redis: RedisServer, openai_stub: Stub, instances: Instances) -> None:
    config = shared(redis.url, openai_stub[1], auth={"keys": {"alice": {"key_env": "ALICE_KEY", "rpm": 5}}})
    a, b = instances(config, env={"ALICE_KEY": "alice-key-0123456789"})
    alice = {"authorization": "Bearer alice-key-0123456789"}
    answers = [httpx.post(url + "/v1/chat/completions", json=BODY, headers=alice) for url in (a, b) * 4]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    error = answers[-1].json()["error"]
    assert error["code"] == "key_rate_limited" and error["type"] == "rate_limit_error"
    assert "The key 'alice' may make 5 requests a minute (auth.keys.alice.rpm)" in error["message"]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert http.post(a + "/v1/chat/completions", json=BODY).status_code == 200  # the master key has no limit
    assert len([s for s in openai_stub[0].seen if s.path == "/v1/chat/completions"]) == 6  # nothing over the limit went upstream


def test_a_cooldown_started_at_one_instance_holds_at_the_other(redis: RedisServer, openai_stub: Stub, openai_stub2: Stub,
                                                               instances: Instances) -> None:
    flaky, spare = openai_stub, openai_stub2
    flaky[0].fail = (500, "down for maintenance")
    config = {"state": redis.url, "targets": {"default": "a", "a": {"url": flaky[1], "fallbacks": ["b"], "cooldown_after": 2,
                                                                    "cooldown": 30},
                                              "b": {"url": spare[1]}}}
    a, b = instances(config)
    for _ in range(2):
        answer = http.post(a + "/v1/chat/completions", json=BODY)
        assert answer.json()["choices"][0]["message"]["content"] == "beta says: hi"
    tried = len(flaky[0].seen)
    assert tried == 2
    import redis as redis_client

    store = redis_client.Redis.from_url(redis.url)
    wait_for(lambda: bool(store.exists("mooltiproxy:cool:a")), 2, "the cooldown reaches Redis")
    time.sleep(0.1)  # and its event the other instance
    answer = http.post(b + "/v1/chat/completions", json=BODY)
    assert answer.json()["choices"][0]["message"]["content"] == "beta says: hi"
    assert len(flaky[0].seen) == tried  # b went straight to the fallback


def test_a_reload_at_one_instance_reloads_the_others(redis: RedisServer, openai_stub: Stub, openai_stub2: Stub,
                                                     instances: Instances, tmp_path: Path) -> None:
    a, b = instances(shared(redis.url, openai_stub[1]))
    assert http.post(b + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"].startswith("alpha")
    for i in (0, 1):
        path = tmp_path / f"instance{i}" / "config.yaml"
        before = path.stat()
        new = path.read_text().replace(openai_stub[1], openai_stub2[1])
        assert len(new) == len(path.read_text())  # same size and time: the file watchers see no change
        path.write_text(new)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert http.post(a + "/admin/reload").status_code == 200
    took = wait_for(lambda: http.post(b + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"]
                    .startswith("beta"), 2, "the other instance reloads")
    assert took < 1.0


def test_without_redis_an_instance_serves_on_its_own_and_says_so(redis: RedisServer, openai_stub: Stub, instances: Instances,
                                                                 tmp_path: Path) -> None:
    (a,) = instances(shared(redis.url, openai_stub[1], auth={"max_failures": 2}), 1)
    assert metric(a, "mooltiproxy_state_up") == 1
    redis.stop()
    wait_for(lambda: metric(a, "mooltiproxy_state_up") == 0, 5, "the instance notices Redis is gone")
    assert http.post(a + "/v1/chat/completions", json=BODY).status_code == 200
    assert http.get(a + "/health").json() == {"status": "ok", "state": "down"}
    for _ in range(2):  # bans still work, locally
        assert httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_("192.0.2.9", "wrong")).status_code == 401
    assert httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_("192.0.2.9")).status_code == 403
    redis.start()
    wait_for(lambda: metric(a, "mooltiproxy_state_up") == 1, 5, "the instance finds Redis again")
    import redis as redis_client

    assert redis_client.Redis.from_url(redis.url).exists("mooltiproxy:ban:192.0.2.9")  # the ban given meanwhile, copied over
    assert httpx.post(a + "/v1/chat/completions", json=BODY, headers=from_("192.0.2.9")).status_code == 403


def test_the_log_says_loudly_when_redis_goes_and_comes_back(redis: RedisServer, openai_stub: Stub, tmp_path: Path) -> None:
    proc, url = proxy_process(tmp_path, shared(redis.url, openai_stub[1]))
    try:
        redis.stop()
        wait_for(lambda: metric(url, "mooltiproxy_state_up") == 0, 5, "Redis is missed")
        redis.start()
        wait_for(lambda: metric(url, "mooltiproxy_state_up") == 1, 5, "Redis is found again")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert re.search(rf"ERROR +mooltiproxy.state: shared state: Redis at redis://127.0.0.1:{redis.port}/0 is unreachable .*; "
                     r"serving with this instance's own state: bans, key limits and cooldowns are NOT shared", out), out
    assert "answers again" in out


def test_state_required_refuses_requests_while_redis_is_away(redis: RedisServer, openai_stub: Stub, instances: Instances) -> None:
    (a,) = instances(shared(redis.url, openai_stub[1], state_required=True), 1)
    assert http.post(a + "/v1/chat/completions", json=BODY).status_code == 200
    redis.stop()
    wait_for(lambda: http.get(a + "/health").status_code == 503, 5, "the instance notices Redis is gone")
    refused = http.post(a + "/v1/chat/completions", json=BODY)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "state_unavailable"
    assert "Redis at redis://127.0.0.1" in refused.json()["error"]["message"]
    redis.start()
    wait_for(lambda: http.post(a + "/v1/chat/completions", json=BODY).status_code == 200, 5, "the instance serves again")


def test_a_redis_password_is_never_printed(redis: RedisServer, openai_stub: Stub, tmp_path: Path) -> None:
    url = redis.url.replace("redis://", "redis://:hunter2-secret@")  # a password Redis does not ask for: ignored by it
    proc, base = proxy_process(tmp_path, shared("${REDIS_URL}", openai_stub[1]), env={"REDIS_URL": url})
    try:
        redis.stop()
        wait_for(lambda: metric(base, "mooltiproxy_state_up") == 0, 5, "Redis is missed")
        redis.start()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "redis://:***@127.0.0.1" in out and "hunter2-secret" not in out


# ------------------------------------------------------------------------------------ PostgreSQL


def recorded(postgres: PostgresServer) -> list[dict[str, Any]]:
    return [json.loads(row[0]) for row in postgres.query("SELECT data::text FROM records ORDER BY created")]


def exchange(url: str, i: int) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "stream": i % 2 == 0}
    if body["stream"]:
        with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    else:
        r = http.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mooltiproxy", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MOOLTIPROXY_KEY": KEY, **(env or {})})


def export(*args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = cli("dataset", "export", "--format", "sharegpt", "--out", "-", *args, env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_1000_exchanges_over_two_instances_land_in_postgres_and_export_as_jsonl_would(
        postgres: PostgresServer, openai_stub: Stub, instances: Instances, tmp_path: Path) -> None:
    pg = {"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"sink": "postgres", "dsn": "${PG_DSN}"}}
    a, b = instances(pg, env={"PG_DSN": postgres.dsn})
    jsonl_dir = tmp_path / "jsonl-datasets"
    c, d = instances({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"dir": str(jsonl_dir)}})
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: exchange((a, b)[i % 2], i), range(1000)))
        list(pool.map(lambda i: exchange((c, d)[i % 2], i), range(1000)))
    wait_for(lambda: postgres.query("SELECT count(*) FROM records")[0][0] >= 1000, 10, "1000 records in PostgreSQL")
    rows = recorded(postgres)
    assert len(rows) == 1000 and len({r["id"] for r in rows}) == 1000
    assert len({r["session"] for r in rows}) == 2  # one per instance, in one table
    by_question = {r["conversations"][0]["value"]: r for r in rows}
    for i in range(1000):
        record = by_question[f"question {i}"]
        assert record["conversations"] == [{"from": "human", "value": f"question {i}"},
                                           {"from": "gpt", "value": f"alpha says: question {i}"}]
        assert record["meta"]["cut_short"] is False and record["meta"]["target"] == "a"
    columns = postgres.query("SELECT id, session, target, thread, key FROM records WHERE id = %s", rows[0]["id"])[0]
    assert columns == (rows[0]["id"], rows[0]["session"], "a", rows[0]["meta"]["thread"], rows[0]["meta"]["key"])
    # The same exchanges through instances writing JSONL export the same (but for the records' ids).
    from_postgres = export("--config", str(tmp_path / "instance0" / "config.yaml"), env={"PG_DSN": postgres.dsn})
    from_jsonl = export("--dir", str(jsonl_dir))
    assert len(from_postgres) == len(from_jsonl) == 1000

    def comparable(rows: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True) for row in rows)

    assert comparable(from_postgres) == comparable(from_jsonl)
    # Reviews live beside the records: one given through any instance's config is what every export sees.
    from mooltiproxy.dataset.places import open_reviews

    open_reviews(tmp_path / "instance1" / "datasets", postgres.dsn).set_status([rows[0]["id"], rows[1]["id"]], "accepted")
    accepted = export("--accepted-only", "--config", str(tmp_path / "instance0" / "config.yaml"), env={"PG_DSN": postgres.dsn})
    assert sorted(r["id"] for r in accepted) == sorted([rows[0]["id"], rows[1]["id"]])


def test_postgres_going_away_holds_then_spills_records_and_loses_none(postgres: PostgresServer, openai_stub: Stub,
                                                                     tmp_path: Path) -> None:
    config = {"targets": {"default": "a", "a": {"url": openai_stub[1]}},
              "dataset": {"sink": "postgres", "dsn": "${PG_DSN}", "queue": 100}}
    proc, url = proxy_process(tmp_path, config, env={"PG_DSN": postgres.dsn})
    try:
        for i in range(10):
            exchange(url, i)
        wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 10, 5, "the first records written")
        postgres.stop()
        for i in range(10, 260):  # every request is still answered
            exchange(url, i)
        wait_for(lambda: metric(url, "mooltiproxy_dataset_records_held") + metric(url, "mooltiproxy_dataset_records_spilled_total")
                 == 250, 10, "every record held or spilled")
        held, spilled = metric(url, "mooltiproxy_dataset_records_held"), metric(url, "mooltiproxy_dataset_records_spilled_total")
        assert held <= 100 and spilled >= 150  # dataset.queue bounds what waits; the oldest went to the spill file
        assert metric(url, "mooltiproxy_dataset_records_lost_total") == 0
        postgres.start()
        wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 260 - spilled, 40, "the held records written")
        assert metric(url, "mooltiproxy_dataset_records_held") == 0
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert postgres.query("SELECT count(*) FROM records")[0][0] == 260 - spilled
    assert "could not be written to PostgreSQL at postgresql://mooltiproxy:***@127.0.0.1" in out
    assert "instead of PostgreSQL at postgresql://mooltiproxy:***@127.0.0.1" in out
    assert "again; every held record has caught up" in out
    assert PostgresServer.PASSWORD not in out
    # The curation tools read the database and the spill file together: all 260, each once.
    stats = cli("dataset", "stats", "--json", "--config", str(tmp_path / "config.yaml"), env={"PG_DSN": postgres.dsn})
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["records"] == 260
    questions = sorted(int(r["conversations"][0]["value"].split()[1]) for r in export("--config", str(tmp_path / "config.yaml"),
                                                                                       env={"PG_DSN": postgres.dsn}))
    assert questions == list(range(260))


def test_an_unreachable_database_is_refused_at_startup_without_its_password(tmp_path: Path) -> None:
    dsn = f"postgresql://mooltiproxy:{PostgresServer.PASSWORD}@127.0.0.1:1/postgres"
    (tmp_path / "config.yaml").write_text("dataset: {sink: postgres, dsn: '${PG_DSN}'}\n")
    for command in ("check", "serve"):
        result = cli(command, "--config", str(tmp_path / "config.yaml"), env={"PG_DSN": dsn})
        assert result.returncode == 1, result.stderr
        assert "dataset.dsn: cannot use PostgreSQL at postgresql://mooltiproxy:***@127.0.0.1:1/postgres:" in result.stderr
        assert PostgresServer.PASSWORD not in result.stderr + result.stdout


# ------------------------------------------------------------------------------------ without Redis


def test_key_rate_limits_hold_across_workers_without_redis(openai_stub: Stub, tmp_path: Path) -> None:
    config = {"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "auth": {"keys": {"bob": {"key_env": "BOB_KEY", "rpm": 4}}}}
    proc, url = proxy_process(tmp_path, config, "--workers", "2", env={"BOB_KEY": "bob-key-0123456789"})
    bob = {"authorization": "Bearer bob-key-0123456789", "connection": "close"}
    snapshots = tmp_path / "datasets" / "metrics"
    try:
        # A new connection each time: the kernel spreads them over both workers (all 16 to one: 1 in 33 000).
        statuses = [httpx.post(url + "/v1/chat/completions", json=BODY, headers=bob).status_code for _ in range(16)]
        time.sleep(1.5)  # each worker's metrics snapshot is at most a second old
        served = [json.loads(p.read_text())["counters"]["mooltiproxy_requests_total"] for p in snapshots.glob("worker-*.json")]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert statuses == [200] * 4 + [429] * 12, out
    assert len(served) == 2 and all(served), "both workers answered some of them"
