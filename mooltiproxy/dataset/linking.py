"""Which conversation a record belongs to, decided as it is recorded.

Only ever within one scope (``records.scope_of``: the API key, the OpenAI ``user``, the conversation the client
named): an exchange continues the latest record whose conversation-and-answer its history begins with (one
from the same client address first), else, when the client slid its window (kept the system prompt and the
latest turns, dropped the oldest), the latest whose tail (system prompt, last turn, answer) its history ends
with. The same conversation sent again is an alternative of the earlier answer (``meta.alternative_of``) when
it is the same client's regeneration: the same history and parent, from the same address within
``REGENERATION_WINDOW`` of the last answer to it, or anywhere in a conversation the client named. Anything
else is a conversation of its own, however alike it opens: fifty strangers saying "Hello!" through one key
are fifty threads. The client's address decides only this; it is never written into a record.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

from .records import Capture, scope_of, tail_lookup

INDEX_SIZE = 200_000  # entries kept for linking; older threads can still be relinked offline (store.link)
REGENERATION_WINDOW = 600.0  # seconds: the same client sending the same conversation again this soon is regenerating


class _Turn(NamedTuple):
    """The last answer to one conversation sent, for telling a regeneration of it."""

    first: str  # the id of the turn's first answer: what alternatives point to
    thread: str
    parent: str | None
    client: str
    at: float


class Linker:
    """The recorder's memory of recent records, by what a later exchange looks them up with."""

    def __init__(self, size: int = INDEX_SIZE) -> None:
        self.size = size
        # scope + a lookup key → (record id, thread), or a _Turn; the least recently used goes first
        self._index: OrderedDict[str, Any] = OrderedDict()

    def known(self, record: dict[str, Any]) -> None:
        """A record written earlier (a session appended to after a restart): later exchanges may continue it."""
        meta = record.get("meta") or {}
        if not (meta.get("key") and meta.get("thread")):
            return
        scope = scope_of(meta.get("key_name"), meta.get("user"), meta.get("conversation"))
        found = (record["id"], meta["thread"])
        self._remember(f"{scope}\x00\x00{meta['key']}", found)
        if meta.get("tail"):
            self._remember(f"{scope}\x01{meta['tail']}", found)
        if meta.get("conversation"):
            self._remember(f"{scope}\x02", found)

    def link(self, capture: Capture, records: list[dict[str, Any]], continues: list[str]) -> None:
        """Each record's parent, thread and alternative_of (see the module's docstring)."""
        head = records[0]["meta"]
        scope = scope_of(capture.key, head["user"], head["conversation"])
        index, client = self._index, capture.client
        found = None
        for key in continues:
            found = index.get(f"{scope}\x00{client}\x00{key}") or index.get(f"{scope}\x00\x00{key}")
            if found is not None:
                break
        if found is None and continues:
            tail = tail_lookup(capture.request.get("messages") or [] if isinstance(capture.request, dict) else [])
            if tail is not None:
                found = index.get(f"{scope}\x01{tail}")
        parent, thread = found if found is not None else (None, None)
        if thread is None and head["conversation"]:
            named = index.get(f"{scope}\x02")  # the conversation the client named, even where its history was edited
            thread = named[1] if named is not None else None
        alternative_of = None
        turn_key = f"{scope}\x03{head['turn']}"
        prior = index.get(turn_key)
        if (isinstance(prior, _Turn) and prior.parent == parent
                and (head["conversation"] or (prior.client == client and capture.created - prior.at <= REGENERATION_WINDOW))):
            alternative_of, thread = prior.first, prior.thread
        first = records[0]["id"]
        thread = thread or first
        remember = self._remember
        for record in records:
            meta = record["meta"]
            meta["parent"], meta["thread"] = parent, thread
            meta["alternative_of"] = alternative_of or (first if record is not records[0] else None)
            linked = (record["id"], thread)
            key = meta["key"]
            remember(f"{scope}\x00\x00{key}", linked)
            if client:
                remember(f"{scope}\x00{client}\x00{key}", linked)
            if meta["tail"]:
                remember(f"{scope}\x01{meta['tail']}", linked)
        if head["conversation"]:
            remember(f"{scope}\x02", (first, thread))
        remember(turn_key, _Turn(alternative_of or first, thread, parent, client, capture.created))

    def _remember(self, key: str, value: Any) -> None:
        index = self._index
        if key in index:
            index.move_to_end(key)  # a new key goes to the end by itself
        index[key] = value
        if len(index) > self.size:
            index.popitem(last=False)

