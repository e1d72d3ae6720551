"""The review page at /ui, served by the proxy itself: sessions, threads, search, a thread shown as a chat,
accept / reject / edit an answer, rank alternatives, and export what was accepted.

Plain HTML forms over Starlette routes and Jinja templates (``review/templates/pages``), no script at all. Only the
master key gets in: by its key header, or by the session cookie that logging in with it sets
(``uiauth``). The guard checks both before a request reaches these routes; the login page is open, and
counts a wrong key in the ban ledger exactly as the API does. A form that changes something needs its
CSRF token (on top of the SameSite=Strict cookie). Errors are shown as pages, with their HTTP status.
Reading the dataset and the reviews blocks, so it runs in worker threads, off the proxy's event loop.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..dataset import catalog, exports, threadview
from ..dataset.formats import answer_start
from ..dataset.reviews import Review, Reviews
from ..dataset.store import Filter, Store
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProxyError
from ..guard.bans import BanLedger, normalize
from ..guard.keys import MASTER, presented
from .sessions import COOKIE, LOGIN_COOKIE, LOGIN_PURPOSE, LOGIN_SECONDS, Sessions, cookie, cookie_auth, set_cookie

__all__ = ["OPEN_PATHS", "cookie_auth", "routes"]

# The login page, and the front page, which sends a browser without a session to the login page
# instead of answering it with an API error.
OPEN_PATHS = frozenset({"/ui", "/ui/", "/ui/login"})

_FORM_LIMIT = 4 * 1024 * 1024  # an edited answer can be long; nothing else on these forms is
_PAGE = 100
_SECURITY_HEADERS = {
    # No script runs on these pages; no other site may frame them (the buttons would be clickable through).
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

log = logging.getLogger("mooltiproxy.review")
_NOTE_LIMIT = 4000
_LONG_TEXT = 2000  # characters: a message longer than this is shown folded, its first 400 characters as the summary

_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "function_call": "tool call", "observation": "tool result"}

Handler = Callable[[Request], Awaitable[Response]]


def routes(sessions: Sessions, store: Store, reviews: Reviews, ledger: BanLedger) -> list[BaseRoute]:
    """The review page's routes. ``sessions`` reads the current master key: a reloaded config with another master
    key ends the sessions signed with the old one at once."""
    site = ReviewSite(sessions, catalog.Catalog(store), reviews, ledger)
    # Read the dataset once now, in the background, so that the page's first load finds it read (100,000 records
    # take about a second); later loads read only what was appended since.
    threading.Thread(target=site.warm, name="mooltiproxy-catalog", daemon=True).start()
    return [
        Route("/ui", site.page(site.index), methods=["GET"]),
        Route("/ui/", site.page(site.index), methods=["GET"]),
        Route("/ui/login", site.page(site.login_form), methods=["GET"]),
        Route("/ui/login", site.page(site.login), methods=["POST"]),
        Route("/ui/logout", site.page(site.logout), methods=["POST"]),
        Route("/ui/threads", site.page(site.thread_list), methods=["GET"]),
        Route("/ui/threads/status", site.page(site.bulk_status), methods=["POST"]),
        Route("/ui/threads/{record_id}", site.page(site.thread), methods=["GET"]),
        Route("/ui/threads/{record_id}/status", site.page(site.branch_status), methods=["POST"]),
        Route("/ui/records/{record_id}/status", site.page(site.record_status), methods=["POST"]),
        Route("/ui/records/{record_id}/answer", site.page(site.record_answer), methods=["POST"]),
        Route("/ui/records/{record_id}/note", site.page(site.record_note), methods=["POST"]),
        Route("/ui/records/{record_id}/turns/{index:int}", site.page(site.record_turn), methods=["POST"]),
        Route("/ui/turns/{record_id}/ranks", site.page(site.ranks), methods=["POST"]),
        Route("/ui/export", site.page(site.export_form), methods=["GET"]),
        Route("/ui/export/download", site.page(site.download), methods=["GET"]),
    ]


def _local(target: str | None, default: str = "/ui") -> str:
    """A redirect target on the review page itself, never another site."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target and "\n" not in target:
        return target
    return default


def _pretty(value: str) -> str:
    try:
        return orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return value


class ReviewSite:
    def __init__(self, sessions: Sessions, catalog: catalog.Catalog, reviews: Reviews, ledger: BanLedger) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.reviews = reviews
        self.ledger = ledger
        self.templates = Environment(loader=PackageLoader("mooltiproxy.review", "templates/pages"), autoescape=True,
                                     undefined=StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["pretty"] = _pretty

    # ----------------------------------------------------------------------------- plumbing

    def page(self, handler: Handler) -> Handler:
        """The handler, with its errors shown as pages and the security headers on every answer."""
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except ProxyError as exc:
                phrase = _phrase(exc.status)
                response = self.render(request, "error.html", status=exc.status, title=f"{exc.status} · {phrase}", message=exc.message)
                response.headers.update(dict(exc.headers))
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return endpoint

    def render(self, request: Request, name: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        session = cookie(request.scope, COOKIE)
        signed_in = self.sessions.valid(session)
        html = self.templates.get_template(name).render(
            csrf=self.sessions.csrf(session) if session and signed_in else "", signed_in=signed_in, here=_here(request), **context)
        return HTMLResponse(html, status_code=status)

    def _master(self, request: Request) -> None:
        if request.scope["mooltiproxy"].key_name != MASTER:
            raise Forbidden("The review page is for the master key only.", code="review_master_only")

    async def _form(self, request: Request) -> dict[str, str]:
        """The posted form, after the CSRF check (a request carrying the key itself needs none: no browser adds it by itself)."""
        form = await _read_form(request, _FORM_LIMIT)
        if presented(request.scope) is None and not self.sessions.csrf_ok(cookie(request.scope, COOKIE), form.get("csrf")):
            raise Forbidden("This form is out of date or came from another site: load the page again and resend it.", code="csrf_failed")
        return form

    def warm(self) -> None:
        try:
            self.catalog.snapshot()
        except Exception:  # the page reads it again, and says what is wrong, when it is opened
            log.warning("reading the dataset for the review page failed; it is read again when the page is opened", exc_info=True)

    async def _snapshot(self) -> catalog.Snapshot:
        return await run_in_threadpool(self.catalog.snapshot)

    async def _reviews(self, ids: list[str] | None = None) -> dict[str, Review]:
        return await run_in_threadpool(self.reviews.all, ids)

    # ----------------------------------------------------------------------------- login

    async def login_form(self, request: Request) -> Response:
        if self.sessions.valid(cookie(request.scope, COOKIE)):
            return RedirectResponse(_local(request.query_params.get("next")), status_code=303)
        return self._login_page(request, 200, None)

    def _login_page(self, request: Request, status: int, error: str | None) -> Response:
        token = self.sessions.issue(LOGIN_PURPOSE, LOGIN_SECONDS)
        response = self.render(request, "login.html", status=status, title="Log in", login_token=token, error=error,
                               next=_local(request.query_params.get("next")))
        response.headers.append(*set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_SECONDS, secure=_secure(request), path="/ui/login"))
        return response

    def _not_banned(self, request: Request) -> str:
        address = normalize(request.scope["mooltiproxy"].client)
        left = self.ledger.banned_for(address)
        if left:
            raise Forbidden(f"{address} is banned for another {math.ceil(left)} s after repeated wrong keys.", code="address_banned",
                            headers=[("Retry-After", str(math.ceil(left)))])
        return address

    async def login(self, request: Request) -> Response:
        address = self._not_banned(request)
        form = await self._form_login(request)
        if not self.sessions.is_master(form.get("key", "").strip()):
            await self.ledger.fail(address)
            if self.ledger.banned_for(address):
                raise Forbidden(f"Incorrect key. {address} is now banned for {self.ledger.ban_seconds:g} s after repeated wrong keys.",
                                code="address_banned")
            return self._login_page(request, 401, "Incorrect key.")
        response = RedirectResponse(_local(form.get("next")), status_code=303)
        secure = _secure(request)
        response.headers.append(*set_cookie(COOKIE, self.sessions.issue(), max_age=int(self.sessions.lifetime), secure=secure))
        response.headers.append(*set_cookie(LOGIN_COOKIE, "", max_age=0, secure=secure, path="/ui/login"))
        return response

    async def _form_login(self, request: Request) -> dict[str, str]:
        form = await _read_form(request, 64 * 1024)
        expected = cookie(request.scope, LOGIN_COOKIE)
        if not (expected and self.sessions.valid(expected, LOGIN_PURPOSE) and _same(form.get("login_token", ""), expected)):
            # Not counted as a failed attempt: another site's page could send it in a visitor's name.
            raise BadRequest("This login form is out of date or came from another site: load the login page again.",
                             code="login_form_expired")
        return form

    async def logout(self, request: Request) -> Response:
        self._master(request)
        await self._form(request)
        self.sessions.end(cookie(request.scope, COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.headers.append(*set_cookie(COOKIE, "", max_age=0, secure=_secure(request)))
        return response

    # ----------------------------------------------------------------------------- reading

    async def index(self, request: Request) -> Response:
        # An open path (see OPEN_PATHS): the guard let it through without a key or a ban check, so both are done here.
        self._not_banned(request)
        if not self.sessions.valid(cookie(request.scope, COOKIE)):
            return RedirectResponse("/ui/login", status_code=303)
        snapshot = await self._snapshot()
        reviews = await self._reviews()
        sessions: dict[str, list[catalog.Entry]] = {}
        for entry in snapshot.entries:
            sessions.setdefault(entry.session, []).append(entry)
        rows = []
        for name, entries in sorted(sessions.items(), key=lambda kv: kv[1][-1].created, reverse=True):
            rows.append({"name": name, **catalog.stats(entries, reviews)})
        total = catalog.stats(snapshot.entries, reviews, threads=len(snapshot.threads))
        return self.render(request, "index.html", title="Sessions", sessions=rows, total=total)

    @staticmethod
    def _filters(values: Any) -> dict[str, str]:
        """The thread list's filters, from a query string or a posted form."""
        return {"q": str(values.get("q", "")).strip(), "session": str(values.get("session", "")), "status": str(values.get("status", "")),
                "target": str(values.get("target", "")), "tag": str(values.get("tag", "")).strip().lstrip("#").lower()}

    @staticmethod
    def _select(snapshot: catalog.Snapshot, reviews: Mapping[str, Review], filters: dict[str, str]) -> list[threadview.ThreadSummary]:
        """The threads the filters keep, newest first. (Blocking: a text search reads the files.)"""
        query, session, status, target, tag = filters["q"], filters["session"], filters["status"], filters["target"], filters["tag"]
        matches = snapshot.search(query) if query else {}
        deleted = {rid for rid, r in reviews.items() if r.deleted}
        found = []
        for tid, everything in snapshot.threads.items():
            if query and tid not in matches:
                continue
            # Deleted records are out of the list, unless the list is of them.
            members = [e for e in everything if (e.id in deleted) == (status == "deleted")] if deleted else list(everything)
            if not members:
                continue
            if tag and not any(e.id in reviews and tag in reviews[e.id].tags for e in members):
                continue
            if session and not any(e.session == session for e in members):
                continue
            if target and not any(e.target == target for e in members):
                continue
            summary = threadview.summarize(tid, members, reviews, matches.get(tid))
            if (status == "accepted" and not summary.accepted) or (status == "rejected" and not summary.rejected) or \
                    (status == "unreviewed" and not any(e.id not in reviews or reviews[e.id].status == "none" for e in members)):
                continue
            found.append(summary)
        found.sort(key=lambda s: s.last, reverse=True)
        return found

    async def thread_list(self, request: Request) -> Response:
        self._master(request)
        q = request.query_params
        filters = self._filters(q)
        try:
            page = max(int(q.get("page", "1")), 1)
        except ValueError:
            raise BadRequest("page must be a whole number.") from None
        snapshot = await self._snapshot()
        reviews = await self._reviews()
        found = await run_in_threadpool(self._select, snapshot, reviews, filters)
        pages = max(math.ceil(len(found) / _PAGE), 1)
        shown = found[(page - 1) * _PAGE : page * _PAGE]
        base = {k: v for k, v in filters.items() if v}
        return self.render(request, "threads.html", title="Threads", threads=shown, total=len(found), page=page, pages=pages,
                           query=filters["q"], session=filters["session"], review_status=filters["status"], target=filters["target"],
                           tag=filters["tag"],
                           sessions=sorted({e.session for e in snapshot.entries}), targets=sorted({e.target for e in snapshot.entries}),
                           page_link=lambda n: "/ui/threads?" + urlencode({**base, "page": n}), done=q.get("done", ""))

    async def bulk_status(self, request: Request) -> Response:
        """Accept, reject or clear every answer of every thread the posted filters keep (all pages of the list). Like a
        whole branch, a bulk change never overturns an answer judged on its own."""
        self._master(request)
        form = await self._form(request)
        filters = self._filters({**form, "status": form.get("status_filter", "")})  # "status" is what to set
        action = form.get("status", "")
        snapshot = await self._snapshot()
        reviews = await self._reviews()
        found = await run_in_threadpool(self._select, snapshot, reviews, filters)
        ids = [e.id for summary in found for e in snapshot.threads[summary.id]]
        if action in ("delete", "restore"):
            if action == "restore":
                ids = [i for i in ids if i in reviews and reviews[i].deleted]
            else:
                ids = [i for i in ids if not (i in reviews and reviews[i].deleted)]
            changed = await run_in_threadpool(self.reviews.set_deleted, ids, action == "delete")
            done = f"{changed} records in {len(found)} threads {'deleted' if action == 'delete' else 'restored'}"
        else:
            status = _status(form)
            changed = await run_in_threadpool(partial(self.reviews.set_status, ids, status, bulk=True))
            done = f"{changed} of {len(ids)} answers in {len(found)} threads set to {status}" + (
                f"; {len(ids) - changed} judged on their own kept their judgment" if changed < len(ids) else "")
        base = {k: v for k, v in filters.items() if v}
        return RedirectResponse("/ui/threads?" + urlencode({**base, "done": done}), status_code=303)

    async def thread(self, request: Request) -> Response:
        self._master(request)
        snapshot = await self._snapshot()
        tid = self._thread_id(snapshot, request.path_params["record_id"])
        view = await run_in_threadpool(threadview.layout, snapshot, tid, request.query_params.get("leaf"))
        ids = [e.id for e in snapshot.threads[tid]]
        reviews = await self._reviews(ids)
        return self.render(request, "thread.html", title=catalog.first_words(view.leaf, 60), tid=tid, view=view, reviews=reviews,
                           records=snapshot.threads[tid], answer_turns=_answer_turns, roles=_ROLES, long_text=_LONG_TEXT)

    def _thread_id(self, snapshot: catalog.Snapshot, record_id: str) -> str:
        tid = snapshot.thread_of(record_id)
        if tid is None:
            raise NotFound(f"No recorded exchange has the id {record_id}.", code="record_not_found")
        return tid

    # ----------------------------------------------------------------------------- reviewing

    async def _record_form(self, request: Request) -> tuple[dict[str, str], catalog.Snapshot, str, str]:
        """A review form posted about one record: the master key's, its CSRF token checked, about a recorded record.
        The form, the catalog's snapshot, the record's id and its thread's."""
        self._master(request)
        form = await self._form(request)
        snapshot = await self._snapshot()
        record_id = request.path_params["record_id"]
        return form, snapshot, record_id, self._thread_id(snapshot, record_id)

    @staticmethod
    async def _record(snapshot: catalog.Snapshot, record_id: str) -> dict[str, Any]:
        """One record read back whole from where the catalog found it."""
        return (await run_in_threadpool(snapshot.load, [snapshot.by_id[record_id]]))[record_id]

    async def record_status(self, request: Request) -> Response:
        form, _, record_id, _ = await self._record_form(request)
        await run_in_threadpool(self.reviews.set_status, record_id, _status(form))
        return _back(form, record_id)

    async def branch_status(self, request: Request) -> Response:
        """Accept (or reject, or clear) every answer on the branch that ends with ``leaf``."""
        self._master(request)
        form = await self._form(request)
        snapshot = await self._snapshot()
        tid = self._thread_id(snapshot, request.path_params["record_id"])
        view = await run_in_threadpool(threadview.layout, snapshot, tid, form.get("leaf"))
        # A whole branch at once: answers judged one by one keep their judgment.
        await run_in_threadpool(partial(self.reviews.set_status, [r["id"] for r in view.path], _status(form), bulk=True))
        return RedirectResponse(f"/ui/threads/{tid}?" + urlencode({"leaf": view.leaf["id"]}), status_code=303)

    async def record_answer(self, request: Request) -> Response:
        form, snapshot, record_id, _ = await self._record_form(request)
        record = await self._record(snapshot, record_id)
        turns: list[dict[str, str]] | None = None
        if form.get("action") != "revert":
            text = form.get("answer", "").replace("\r\n", "\n")  # browsers send a textarea's line ends as CRLF
            call = form.get("call", "").strip()
            turns = [{"from": "gpt", "value": text}] if text or not call else []
            if call:
                turns.append({"from": "function_call", "value": call})
            if turns == _answer_turns(record):
                turns = None  # unchanged: nothing to keep beside the recorded answer
        try:
            await run_in_threadpool(self.reviews.set_answer, record_id, turns)
        except ValueError as exc:
            raise BadRequest(f"The edited answer was not saved: {exc}.", code="invalid_answer") from None
        return _back(form, record_id)

    async def record_note(self, request: Request) -> Response:
        """The reviewer's note on a record; #words in it are tags the thread list filters on."""
        form, _, record_id, _ = await self._record_form(request)
        note = form.get("note", "").replace("\r\n", "\n")
        if len(note) > _NOTE_LIMIT:
            raise BadRequest(f"A note holds at most {_NOTE_LIMIT} characters; this one has {len(note)}.", code="note_too_long")
        await run_in_threadpool(self.reviews.set_note, record_id, note)
        return _back(form, record_id)

    async def record_turn(self, request: Request) -> Response:
        """An edit of a turn the client sent (a user or system message): exports use it in this record's row and in every
        later turn's row that holds it."""
        form, snapshot, record_id, _ = await self._record_form(request)
        index = int(request.path_params["index"])
        record = await self._record(snapshot, record_id)
        sent = (record.get("conversations") or [])[: answer_start(record)]
        if not 0 <= index < len(sent) or sent[index].get("from") not in ("human", "system"):
            raise BadRequest(f"Turn {index} of {record_id} is not a user or system message its client sent.", code="not_an_editable_turn")
        text = form.get("text", "").replace("\r\n", "\n")
        value = None if form.get("action") == "revert" or text == sent[index].get("value") else text
        await run_in_threadpool(self.reviews.set_turn, record_id, index, value)
        return RedirectResponse(_local(form.get("back"), f"/ui/threads/{record_id}"), status_code=303)

    async def ranks(self, request: Request) -> Response:
        """Rank the alternatives of the turn ``record_id`` answers: fields ``rank.<id>`` = 1, 2, … or empty."""
        form, snapshot, record_id, tid = await self._record_form(request)
        thread = await run_in_threadpool(snapshot.load, snapshot.threads[tid])
        turn = (thread[record_id].get("meta") or {}).get("turn")
        alternatives = {rid for rid, r in thread.items() if turn and (r.get("meta") or {}).get("turn") == turn}
        ranks: dict[str, int | None] = {}
        for name, value in form.items():
            if not name.startswith("rank."):
                continue
            rid = name.removeprefix("rank.")
            if rid not in alternatives:
                raise BadRequest(f"{rid} is not an alternative answer of this turn.", code="not_an_alternative")
            if value.strip() and not (value.strip().isdigit() and int(value) >= 1):
                raise BadRequest(f"The rank of {rid} must be 1, 2, … or empty, not {value!r}.", code="invalid_rank")
            ranks[rid] = int(value) if value.strip() else None
        await run_in_threadpool(self.reviews.set_ranks, ranks)
        return _back(form, record_id)

    # ----------------------------------------------------------------------------- exporting

    def _selection(self, request: Request) -> tuple[str, exports.Selection]:
        q = request.query_params
        fmt = q.get("format", "sharegpt")
        if fmt not in exports.FORMATS:
            raise BadRequest(f"No export format named {fmt!r}; formats: {', '.join(exports.FORMATS)}.", code="unknown_format")
        moments = {}
        for name in ("since", "until"):
            value = q.get(name, "").strip()
            if value:
                try:
                    datetime.fromisoformat(value.removesuffix("Z"))
                except ValueError:
                    raise BadRequest(f"{name} must be a date (2026-11-21) or a time (2026-11-21T10:00), not {value!r}.") from None
            moments[name] = value or None
        where = Filter(sessions=tuple(s for s in q.getlist("session") if s), targets=tuple(t for t in q.getlist("target") if t),
                       since=moments["since"], until=moments["until"])
        return fmt, exports.Selection(where=where, accepted_only=q.get("accepted_only") == "on", every_turn=q.get("every_turn") == "on",
                                      include_cut_short=q.get("include_cut_short") == "on")

    async def export_form(self, request: Request) -> Response:
        self._master(request)
        snapshot = await self._snapshot()
        report = None
        if request.query_params.get("check"):
            fmt, selection = self._selection(request)
            _, report = await run_in_threadpool(exports.export, self.catalog.store, self.reviews, fmt, selection)
        q = request.query_params
        params = [(k, v) for k, v in q.multi_items() if k != "check"]
        return self.render(request, "export.html", title="Export", report=report, formats=exports.FORMATS,
                           sessions=sorted({e.session for e in snapshot.entries}), targets=sorted({e.target for e in snapshot.entries}),
                           chosen={"format": q.get("format", "sharegpt"), "session": q.getlist("session"), "target": q.getlist("target"),
                                   "since": q.get("since", ""), "until": q.get("until", ""),
                                   # A fresh form exports what reviewers accepted: that is what the page is for.
                                   "accepted_only": q.get("accepted_only") == "on" or not q,
                                   "every_turn": q.get("every_turn") == "on", "include_cut_short": q.get("include_cut_short") == "on"},
                           download="/ui/export/download?" + urlencode(params) if report is not None else None)

    async def download(self, request: Request) -> Response:
        self._master(request)
        fmt, selection = self._selection(request)
        out, report = await run_in_threadpool(exports.export, self.catalog.store, self.reviews, fmt, selection)
        name = f"mooltiproxy-{fmt}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.jsonl"
        return Response(exports.dump(out), media_type="application/jsonl", headers={
            "content-disposition": f'attachment; filename="{name}"',
            "x-mooltiproxy-rows": str(report.written),
            "x-mooltiproxy-left-out": str(len(report.left_out)),
        })


async def _read_form(request: Request, limit: int) -> dict[str, str]:
    """A URL-encoded form body, read up to ``limit`` bytes (forms here carry no files)."""
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise BadRequest("This form must be sent as application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"This form is larger than the {limit // 1024} KiB it may be.")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10_000))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("This form could not be read (it is not UTF-8 URL-encoded text).") from None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _answer_turns(record: dict[str, Any]) -> list[dict[str, str]]:
    conversation = record.get("conversations") or []
    return [{"from": t["from"], "value": t["value"]} for t in conversation[answer_start(record):]]


def _back(form: dict[str, str], record_id: str) -> Response:
    """Back to the page the form was on (by default the record's thread), at the record."""
    return RedirectResponse(_local(form.get("back"), f"/ui/threads/{record_id}") + f"#{record_id}", status_code=303)


def _status(form: dict[str, str]) -> str:
    status = form.get("status", "")
    if status not in ("accepted", "rejected", "none"):
        raise BadRequest("status must be accepted, rejected or none.", code="invalid_status")
    return status


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")
