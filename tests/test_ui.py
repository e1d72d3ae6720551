"""The review page over real HTTP: logging in with the master key (and bans for wrong ones), the session
cookie and CSRF, reading sessions and threads, reviewing (accept, reject, edit, rank), exporting, and
errors shown as pages."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from mooltiproxy.dataset.reviews import Reviews
from mooltiproxy.review.sessions import COOKIE, LOGIN_COOKIE, Sessions

from .conftest import AUTH, KEY
from .dataset_kit import Recording, sample, start_review_proxy, user
from .test_exports import check_sharegpt

Row = dict[str, Any]
ALICE = "alice-key-0123456789abcdef"


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Row]:
    return sample(tmp_path / "datasets")


@pytest.fixture
def max_failures() -> int:
    return 3


@pytest.fixture
def url(stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: dict[str, Row], max_failures: int) -> str:
    config = {"auth": {"max_failures": max_failures, "keys": {"alice": {"key_env": "ALICE_KEY"}}},
              "targets": {"default": "a", "a": {"url": "http://127.0.0.1:9"}}}
    return str(start_review_proxy(stack, tmp_path, monkeypatch, config, env={"ALICE_KEY": ALICE}).url)


@pytest.fixture
def browser(url: str) -> Iterator[httpx.Client]:
    """A client that keeps cookies, as a browser does, and does not follow redirects (the tests look at them)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert found, f"no hidden field {name} on the page"
    return html.unescape(found.group(1))


def log_in(client: httpx.Client, key: str = KEY) -> httpx.Response:
    form = client.get("/ui/login")
    return client.post("/ui/login", data={"key": key, "login_token": hidden(form.text, "login_token"), "next": "/ui"})


def csrf(client: httpx.Client, path: str = "/ui") -> str:
    return hidden(client.get(path).text, "csrf")


def refused(response: httpx.Response) -> None:
    """A page the request may not see: the guard's 401, or (for a browser's GET) a redirect to the login page."""
    if response.status_code == 303:
        assert response.headers["location"].startswith("/ui/login")
    else:
        assert response.status_code == 401, response.text


def set_cookie_headers(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


# ------------------------------------------------------------------------------------- logging in


def test_logging_in_sets_a_signed_session_cookie_that_is_not_the_key(browser: httpx.Client) -> None:
    assert browser.get("/ui").headers["location"] == "/ui/login"
    form = browser.get("/ui/login")
    assert form.status_code == 200 and "text/html" in form.headers["content-type"] and 'type="password"' in form.text
    assert set_cookie_headers(form)[LOGIN_COOKIE].endswith("Path=/ui/login; HttpOnly; SameSite=Strict")
    answer = log_in(browser)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    session = set_cookie_headers(answer)[COOKIE]
    assert re.fullmatch(rf"{COOKIE}=\d+\.[\w-]+\.[0-9a-f]{{64}}; Max-Age=43200; Path=/ui; HttpOnly; SameSite=Strict", session)
    assert KEY not in session
    page = browser.get("/ui")
    assert page.status_code == 200 and "s1" in page.text and "s2" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # The cookie opens the review page only, never the API.
    assert browser.get("/v1/models").status_code == 401


def test_a_wrong_key_counts_toward_a_ban_like_the_api(browser: httpx.Client, url: str) -> None:
    with httpx.Client(base_url=url) as signed_in:
        log_in(signed_in)
        assert signed_in.get("/ui").status_code == 200
        _test_bans(browser, url)
        assert signed_in.get("/ui").status_code == 403  # the same address: its session is no way around the ban
        assert signed_in.get("/ui/threads").status_code == 403


def _test_bans(browser: httpx.Client, url: str) -> None:
    wrong = log_in(browser, "not-the-key")
    assert wrong.status_code == 401 and "Incorrect key." in wrong.text and COOKIE not in set_cookie_headers(wrong)
    assert log_in(browser, "still-wrong").status_code == 401
    third = log_in(browser, "wrong-again")
    assert third.status_code == 403 and "banned" in third.text and "text/html" in third.headers["content-type"]
    # Banned everywhere, the right key included, on the page and the API alike.
    assert log_in(browser, KEY).status_code == 403
    assert httpx.get(url + "/v1/models", headers=AUTH).status_code == 403


def test_a_login_post_without_the_forms_token_is_refused_and_not_counted(browser: httpx.Client, url: str) -> None:
    for _ in range(5):  # what another site's page could make a visitor's browser send: no cookie, no token
        answer = httpx.post(url + "/ui/login", data={"key": "guess", "login_token": "é"}, headers={"cookie": f"{LOGIN_COOKIE}=é".encode()})
        assert answer.status_code == 400 and "load the login page again" in answer.text
    assert log_in(browser).status_code == 303  # not banned


@pytest.mark.parametrize("max_failures", [10])
def test_only_a_valid_session_cookie_opens_the_page(browser: httpx.Client, url: str) -> None:
    log_in(browser)
    good = browser.cookies[COOKIE]
    sessions = Sessions(KEY)
    expiry, nonce, signature = good.split(".")
    forged = [f"{int(expiry) + 3600}.{nonce}.{signature}", f"{expiry}.{nonce}.{'0' * 64}",
              Sessions(KEY, clock=lambda: 0).issue(),  # signed right, but long expired
              Sessions("another-master-key-000").issue(), sessions.issue("login"),  # a login form's token is no session
              f"{expiry}.{nonce}.{signature[:-1]}é"]
    for value in forged:
        as_sent = {"cookie": f"{COOKIE}={value}".encode()}  # raw, as a client may send anything
        refused(httpx.get(url + "/ui/threads", headers=as_sent))
        assert httpx.get(url + "/ui", headers=as_sent).headers["location"] == "/ui/login"
    assert httpx.get(url + "/ui/threads", cookies={COOKIE: sessions.issue()}).status_code == 200


def test_a_new_master_key_ends_the_sessions_of_the_old_one(stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          dataset: dict[str, Row]) -> None:
    server = start_review_proxy(stack, tmp_path, monkeypatch)
    with httpx.Client(base_url=server.url) as client:
        log_in(client)
        assert client.get("/ui/threads").status_code == 200
        monkeypatch.setenv("MOOLTIPROXY_KEY", "a-brand-new-master-key-0123")
        assert server.server.config.app.runtime.live.reload()
        refused(client.get("/ui/threads"))
        assert log_in(client, KEY).status_code == 401
        assert log_in(client, "a-brand-new-master-key-0123").status_code == 303
        assert client.get("/ui/threads").status_code == 200


def test_logging_out_clears_the_cookie(browser: httpx.Client) -> None:
    log_in(browser)
    assert browser.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    answer = browser.post("/ui/logout", data={"csrf": csrf(browser)})
    assert answer.status_code == 303 and set_cookie_headers(answer)[COOKIE].startswith(f"{COOKIE}=; Max-Age=0; Path=/ui")
    assert browser.get("/ui").headers["location"] == "/ui/login"


def test_login_sends_back_only_to_the_review_page(browser: httpx.Client) -> None:
    form = browser.get("/ui/login?next=https://evil.example/")
    assert hidden(form.text, "next") == "/ui"
    answer = browser.post("/ui/login", data={"key": KEY, "login_token": hidden(form.text, "login_token"), "next": "//evil.example/"})
    assert answer.headers["location"] == "/ui"


# ------------------------------------------------------------------------------------- reading


def test_sessions_threads_and_search(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    log_in(browser)
    index = browser.get("/ui").text
    assert "15 records in 9 threads" in index
    threads = browser.get("/ui/threads", params={"session": "s2"}).text
    assert "Write a haiku" in threads and "Pick a number" in threads and "Weather in Paris" not in threads
    found = browser.get("/ui/threads", params={"q": "ROME"}).text
    assert "1 thread mentioning" in found and "Weather in Paris and Rome?" in found
    assert "0 threads" in browser.get("/ui/threads", params={"q": "no such words anywhere"}).text
    assert browser.get("/ui/threads", params={"page": "x"}).status_code == 400
    # What the recorder appends shows at the next page load.
    Recording(tmp_path / "datasets", "s2").chat([user("a brand new question")], "a brand new answer")
    assert "16 records in 10 threads" in browser.get("/ui").text


def test_a_thread_is_shown_as_a_chat_with_its_alternatives(browser: httpx.Client, dataset: dict[str, Row]) -> None:
    log_in(browser)
    page = browser.get(f"/ui/threads/{dataset['a2']['id']}")
    assert page.status_code == 200
    text = page.text
    # The longest branch: every turn once, in order, each answer in its own reviewable block.
    order = [text.index(s) for s in ("Be nice.", "first answer", "two", "second answer", "three", "third answer")]
    assert order == sorted(order)
    for key in ("a1", "a2", "a3"):
        assert f'id="{dataset[key]["id"]}"' in text
    assert "2 answers were recorded for this turn" in text and "second answer, again" in text and "first answer (retry)" in text
    # The other branch is one link away.
    assert f"leaf={dataset['a2b']['id']}" in text
    other = browser.get(f"/ui/threads/{dataset['a2']['id']}", params={"leaf": dataset["a2b"]["id"]}).text
    assert f'id="{dataset["a2b"]["id"]}"' in other and "third answer" not in other.split("2 answers were recorded")[0]


def test_recorded_text_is_escaped(browser: httpx.Client, tmp_path: Path) -> None:
    (record,) = Recording(tmp_path / "datasets", "s3").chat([user("<script>alert(1)</script>")], "<img src=x onerror=alert(2)>")
    log_in(browser)
    page = browser.get(f"/ui/threads/{record['id']}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_long_messages_are_shown_folded(browser: httpx.Client, tmp_path: Path) -> None:
    long_question = "word " * 1000 + "<b>the end</b>"
    record, _ = Recording(tmp_path / "datasets", "s3").chat([user(long_question)], "short answer", "y" * 2500)
    log_in(browser)
    page = browser.get(f"/ui/threads/{record['id']}").text
    assert page.count(f"({len(long_question)} characters: show all)") == 1 and "(2500 characters: show all)" in page
    assert "&lt;b&gt;the end&lt;/b&gt;" in page  # all of it there, folded, and escaped
    assert "short answer</div>" in page


def test_accepting_every_answer_of_the_threads_a_filter_keeps(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    """Bulk over a filter (every page of it): the session s2's answers accepted at once, but the one rejected on its
    own stays rejected; nothing outside the filter changes."""
    reviews = Reviews.beside(tmp_path / "datasets")
    reviews.set_status(dataset["n2"]["id"], "rejected")
    log_in(browser)
    token = csrf(browser, "/ui/threads?session=s2")
    done = browser.post("/ui/threads/status", data={"csrf": token, "session": "s2", "q": "", "status_filter": "", "target": "",
                                                   "status": "accepted"})
    assert done.status_code == 303
    page = browser.get(done.headers["location"]).text
    assert "5 of 6 answers in 5 threads set to accepted; 1 judged on their own kept their judgment." in page
    s2 = {r["id"] for r in dataset.values() if r["session"] == "s2"}
    after = reviews.all()
    assert {rid for rid, r in after.items() if r.accepted} == s2 - {dataset["n2"]["id"]} and after[dataset["n2"]["id"]].rejected
    assert browser.post("/ui/threads/status", data={"session": "s2", "status": "accepted"}).status_code == 403  # no CSRF token


def test_notes_with_tags_and_deleting_over_a_filter(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    """A note's #words are tags the list filters on; deleting over a filter takes records out of the lists and the
    exports (the file keeps them), and restoring brings them back."""
    log_in(browser)
    a3 = dataset["a3"]["id"]
    token = csrf(browser, f"/ui/threads/{a3}")
    assert browser.post(f"/ui/records/{a3}/note", data={"csrf": token, "note": "Lovely. #good #Keep"}).status_code == 303
    page = browser.get(f"/ui/threads/{a3}").text
    assert "Lovely. #good #Keep" in page and "#good</span>" in page and "#keep</span>" in page
    tagged = browser.get("/ui/threads", params={"tag": "#keep"}).text
    assert "1 thread." in tagged and f"/ui/threads/{dataset['a1']['id']}" in tagged
    assert browser.post(f"/ui/records/{a3}/note", data={"csrf": token, "note": "x" * 4001}).status_code == 400

    files = {p.name: p.read_bytes() for p in (tmp_path / "datasets").glob("*.jsonl")}
    done = browser.post("/ui/threads/status", data={"csrf": csrf(browser, "/ui/threads"), "session": "s2", "status": "delete"})
    assert "6 records in 5 threads deleted" in browser.get(done.headers["location"]).text
    assert "session=s2" in done.headers["location"] and "0 threads." in browser.get("/ui/threads?session=s2").text
    assert "5 threads." in browser.get("/ui/threads", params={"session": "s2", "status": "deleted"}).text
    reviews = Reviews.beside(tmp_path / "datasets")
    from mooltiproxy.dataset import exports
    from mooltiproxy.dataset.exports import Selection
    from mooltiproxy.dataset.store import Filter, Store
    out, report = exports.export(Store(tmp_path / "datasets"), reviews, "sharegpt", Selection(where=Filter(sessions=("s2",))))
    assert out == [] and report.skipped[exports.DELETED] == 6
    assert {p.name: p.read_bytes() for p in (tmp_path / "datasets").glob("*.jsonl")} == files  # the recorded files untouched
    again = browser.post("/ui/threads/status", data={"csrf": csrf(browser, "/ui/threads"), "session": "s2", "status_filter": "deleted",
                                                     "status": "restore"})
    assert "6 records in 5 threads restored" in browser.get(again.headers["location"]).text
    assert "5 threads." in browser.get("/ui/threads?session=s2").text


def test_editing_a_turn_the_client_sent(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    """A user's message edited where it was first sent reads as edited in that row and in every later turn's row; the
    recorded files are untouched; a turn that is an answer or out of range is refused."""
    log_in(browser)
    a2, a3 = dataset["a2"]["id"], dataset["a3"]["id"]
    page = browser.get(f"/ui/threads/{a3}").text
    assert f'action="/ui/records/{a2}/turns/3"' in page  # "two" was first sent with a2
    token = hidden(page, "csrf")
    files = {p.name: p.read_bytes() for p in (tmp_path / "datasets").glob("*.jsonl")}
    assert browser.post(f"/ui/records/{a2}/turns/3", data={"csrf": token, "text": "two, said better"}).status_code == 303
    page = browser.get(f"/ui/threads/{a3}").text
    assert "two, said better" in page and "edited</span>" in page
    from mooltiproxy.dataset import exports
    from mooltiproxy.dataset.exports import Selection
    from mooltiproxy.dataset.store import Store
    out, _ = exports.export(Store(tmp_path / "datasets"), Reviews.beside(tmp_path / "datasets"), "sharegpt", Selection(every_turn=True))
    rows = {r["id"]: r for r in out}
    assert rows[a2]["conversations"][3] == rows[a3]["conversations"][3] == {"from": "human", "value": "two, said better"}
    assert {p.name: p.read_bytes() for p in (tmp_path / "datasets").glob("*.jsonl")} == files
    assert browser.post(f"/ui/records/{a2}/turns/4", data={"csrf": token, "text": "x"}).status_code == 400  # the answer
    assert browser.post(f"/ui/records/{a2}/turns/9", data={"csrf": token, "text": "x"}).status_code == 400
    browser.post(f"/ui/records/{a2}/turns/3", data={"csrf": token, "text": "", "action": "revert"})
    assert Reviews.beside(tmp_path / "datasets").get(a2).turns is None


def test_a_reviews_file_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "reviews.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE reviews (record TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'none' CHECK (status IN "
                   "('accepted', 'rejected', 'none')), answer TEXT, rank INTEGER CHECK (rank IS NULL OR rank >= 1), updated TEXT NOT NULL)")
        db.execute("INSERT INTO reviews (record, status, updated) VALUES ('rec-1', 'accepted', '2026-11-21T10:00:00Z')")
    reviews = Reviews(path)
    assert reviews.get("rec-1").accepted and reviews.get("rec-1").note is None
    reviews.set_note("rec-1", "#fine")
    assert reviews.get("rec-1").tags == ["fine"] and reviews.get("rec-1").accepted


def test_errors_are_pages(browser: httpx.Client) -> None:
    log_in(browser)
    missing = browser.get("/ui/threads/rec-nope")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert "No recorded exchange has the id rec-nope." in missing.text
    assert browser.get("/ui/export/download", params={"format": "csv"}).status_code == 400


# ------------------------------------------------------------------------------------- reviewing


def test_accepting_needs_the_csrf_token(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    log_in(browser)
    rid = dataset["a1"]["id"]
    refused = browser.post(f"/ui/records/{rid}/status", data={"status": "accepted"})
    assert refused.status_code == 403 and "out of date or came from another site" in refused.text
    refused = browser.post(f"/ui/records/{rid}/status", data={"status": "accepted", "csrf": Sessions(KEY).csrf(Sessions(KEY).issue())})
    assert refused.status_code == 403
    answer = browser.post(f"/ui/records/{rid}/status", data={"status": "accepted", "csrf": csrf(browser), "back": f"/ui/threads/{rid}"})
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui/threads/{rid}#{rid}"
    assert Reviews.beside(tmp_path / "datasets").get(rid).status == "accepted"
    assert browser.post(f"/ui/records/{rid}/status", data={"status": "great", "csrf": csrf(browser)}).status_code == 400


def test_the_key_itself_needs_no_csrf_token_and_only_the_master_key_may_review(url: str, dataset: dict[str, Row], tmp_path: Path) -> None:
    rid = dataset["a1"]["id"]
    assert httpx.post(f"{url}/ui/records/{rid}/status", data={"status": "rejected"}, headers=AUTH).status_code == 303
    assert Reviews.beside(tmp_path / "datasets").get(rid).rejected
    named = httpx.post(f"{url}/ui/records/{rid}/status", data={"status": "accepted"}, headers={"authorization": f"Bearer {ALICE}"})
    assert named.status_code == 403 and "master key only" in named.text
    assert httpx.get(f"{url}/ui/threads", headers={"authorization": f"Bearer {ALICE}"}).status_code == 403
    refused(httpx.get(f"{url}/ui/threads"))


def test_editing_an_answer(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    log_in(browser)
    reviews = Reviews.beside(tmp_path / "datasets")
    rid, token = dataset["a3"]["id"], csrf(browser)
    assert browser.post(f"/ui/records/{rid}/answer", data={"answer": "Line one.\r\nLine two.", "csrf": token}).status_code == 303
    assert reviews.get(rid).answer == ({"from": "gpt", "value": "Line one.\nLine two."},)
    page = browser.get(f"/ui/threads/{rid}").text
    assert "Line one.\nLine two." in page and ">edited<" in page
    browser.post(f"/ui/records/{rid}/answer", data={"action": "revert", "csrf": token})
    assert reviews.get(rid).answer is None
    # The same text as recorded is no edit; a broken tool call is refused with the reason.
    browser.post(f"/ui/records/{rid}/answer", data={"answer": "third answer", "csrf": token})
    assert reviews.get(rid).answer is None
    tool = dataset["t1"]["id"]
    bad = browser.post(f"/ui/records/{tool}/answer", data={"answer": "", "call": "{oops", "csrf": token})
    assert bad.status_code == 400 and "The edited answer was not saved: the tool call is not valid JSON" in bad.text
    good = browser.post(f"/ui/records/{tool}/answer", data={"answer": "", "call": '{"name": "weather", "arguments": {"city": "Nice"}}',
                                                            "csrf": token})
    assert good.status_code == 303
    assert reviews.get(tool).answer == ({"from": "function_call", "value": '{"name":"weather","arguments":{"city":"Nice"}}'},)


def test_ranking_alternatives_and_accepting_a_branch(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    log_in(browser)
    reviews = Reviews.beside(tmp_path / "datasets")
    a2, a2b, token = dataset["a2"]["id"], dataset["a2b"]["id"], csrf(browser)
    assert browser.post(f"/ui/turns/{a2}/ranks", data={f"rank.{a2}": "2", f"rank.{a2b}": "1", "csrf": token}).status_code == 303
    assert (reviews.get(a2).rank, reviews.get(a2b).rank) == (2, 1)
    wrong = browser.post(f"/ui/turns/{a2}/ranks", data={f"rank.{dataset['a3']['id']}": "1", "csrf": token})
    assert wrong.status_code == 400 and "is not an alternative answer of this turn" in wrong.text
    assert browser.post(f"/ui/turns/{a2}/ranks", data={f"rank.{a2}": "first", "csrf": token}).status_code == 400
    answer = browser.post(f"/ui/threads/{a2}/status", data={"status": "accepted", "leaf": dataset["a3"]["id"], "csrf": token})
    assert answer.status_code == 303
    assert {k for k in ("a1", "a2", "a3", "a2b", "a1b") if reviews.get(dataset[k]["id"]).accepted} == {"a1", "a2", "a3"}


# ------------------------------------------------------------------------------------- exporting


def test_exporting_accepted_answers(browser: httpx.Client, dataset: dict[str, Row], tmp_path: Path) -> None:
    log_in(browser)
    form = browser.get("/ui/export").text
    assert 'name="accepted_only" checked' in form  # what the page is for
    Reviews.beside(tmp_path / "datasets").set_status([dataset["a3"]["id"], dataset["broken"]["id"]], "accepted")
    query = {"format": "sharegpt", "accepted_only": "on", "check": "1"}
    report = browser.get("/ui/export", params=query).text
    assert "1 row in sharegpt format." in report and dataset["broken"]["id"] in report
    assert "the tool call before turn 3 has no tool result after it" in report
    download = browser.get("/ui/export/download", params={"format": "sharegpt", "accepted_only": "on", "session": "s1"})
    assert download.status_code == 200
    assert re.fullmatch(r'attachment; filename="mooltiproxy-sharegpt-\d{8}-\d{6}\.jsonl"', download.headers["content-disposition"])
    rows = [json.loads(line) for line in download.text.splitlines()]
    assert [r["id"] for r in rows] == [dataset["a3"]["id"]] and download.headers["x-mooltiproxy-rows"] == "1"
    check_sharegpt(rows[0])
    everything = browser.get("/ui/export/download", params={"format": "openai"})
    assert len(everything.text.splitlines()) == 6  # one per conversation; the broken one left out
    every_turn = browser.get("/ui/export/download", params={"format": "openai", "every_turn": "on"})
    assert len(every_turn.text.splitlines()) == 12  # every answer but the cut, the error and the broken one
    assert browser.get("/ui/export", params={"since": "soon", "check": "1"}).status_code == 400


# ------------------------------------------------------------------------------------- at scale


def test_a_hundred_thousand_records_page_by_page(stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100,000 recorded exchanges (33,334 three-turn chats): the page lists them without holding their text (the
    process grows by less than 100 MB), its first load comes in under a second once the proxy has read the folder in
    the background, opening a thread reads only that thread back, and a record appended later shows at once."""
    import gc
    import threading
    import time

    import orjson
    import psutil

    folder = tmp_path / "datasets"
    folder.mkdir()
    lines = []
    for i in range(100_000):
        chat, turn = divmod(i, 3)
        conversation = [{"from": "system", "value": "Be brief."}]
        for t in range(turn + 1):
            conversation += [{"from": "human", "value": f"chat {chat} question {t} " + "lorem ipsum " * 8},
                             {"from": "gpt", "value": f"answer {t} of chat {chat} " + "dolor sit amet " * 8}]
        parent = f"rec-{i - 1:08d}" if turn else None
        created = f"2026-11-21T10:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{i % 100:03d}Z"
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        lines.append(orjson.dumps({"id": f"rec-{i:08d}", "session": "big", "conversations": conversation, "tools": "[]", "meta": {
            "target": "a", "key_name": "master", "status": 200, "created": created, "cut_short": False, "turn": f"t{i}",
            "key": f"k{i}", "tail": None, "conversation": None, "user": None, "parent": parent, "thread": f"rec-{i - turn:08d}",
            "alternative_of": None, "usage": usage, "request_id": f"r{i}"}}))
    (folder / "big.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    del lines
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    url = start_review_proxy(stack, tmp_path, monkeypatch).url
    with httpx.Client(base_url=url, timeout=30) as client:
        log_in(client)
        for t in threading.enumerate():
            if t.name == "mooltiproxy-catalog":
                t.join(30)  # the read the proxy started in the background (about a second for this folder)
        started = time.monotonic()
        first = client.get("/ui/threads")
        took = time.monotonic() - started
        assert first.status_code == 200 and "33334 threads" in first.text
        assert took < 1.0, f"the first list took {took:.2f} s"
        assert client.get("/ui").status_code == 200 and "100000 records in 33334 threads" in client.get("/ui").text
        page = client.get("/ui/threads/rec-00000000")
        assert page.status_code == 200 and "answer 2 of chat 0" in page.text
        found = client.get("/ui/threads", params={"q": "chat 33333 question 0"})
        assert "1 thread mentioning" in found.text
        gc.collect()
        grew = (process.memory_info().rss - before) / 1e6
        assert grew < 100, f"the process grew by {grew:.0f} MB"
        with (folder / "big.jsonl").open("ab") as f:  # a record recorded now
            f.write(orjson.dumps({"id": "rec-late", "session": "big", "conversations": [
                {"from": "human", "value": "a late question"}, {"from": "gpt", "value": "a late answer"}],
                "tools": "[]", "meta": {"target": "a", "status": 200, "created": "2026-11-22T00:00:00.000Z", "parent": None,
                                        "thread": "rec-late", "alternative_of": None}}) + b"\n")
        started = time.monotonic()
        assert "a late question" in client.get("/ui/threads").text
        assert time.monotonic() - started < 1.0
