"""Character cards (SillyTavern / Tavern card V2, and V1): reading them, and laying one into a conversation.

A card is read from a ``.json`` file or from a PNG whose ``chara`` text chunk holds the card JSON in
base64; the PNG is parsed with the standard library alone. ``Card.apply`` turns a request's messages
into chat mode with that character, the way SillyTavern's defaults do:

1. one system message: the card's ``system_prompt`` (its ``{{original}}`` replaced by the request's own
   system prompt; without ``{{original}}`` the request's system prompt follows it, so nothing the
   client sent is lost), or the request's system prompt when the card has none; then the
   description, ``{{char}}'s personality: …``, ``Scenario: …``, and the example dialogue, each block
   of ``mes_example`` opened by ``***`` (SillyTavern's example separator) in place of ``<START>``;
2. ``first_mes`` as the character's first (assistant) message, unless the history already opens with
   an assistant message;
3. the request's history;
4. ``post_history_instructions`` as a last system message (before a final assistant message that is
   being continued, so the continuation stays last).

``{{char}}`` / ``<BOT>`` and ``{{user}}`` / ``<USER>`` are replaced, in any letter case, everywhere:
in the card's texts and in the history's text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Card", "CardError", "card_from_json", "load_card"]

_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "system_prompt", "post_history_instructions")
# Pygmalion-era V1 cards name the same fields differently.
_V1_ALIASES = {"char_name": "name", "char_persona": "personality", "world_scenario": "scenario", "char_greeting": "first_mes",
               "example_dialogue": "mes_example"}
_MACRO = re.compile(r"\{\{(char|user)\}\}|<(BOT|USER)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{original\}\}", re.IGNORECASE)
_START = re.compile(r"^[ \t]*<START>[ \t]*$", re.IGNORECASE | re.MULTILINE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_TEXT = 16 * 1024 * 1024  # a card's JSON is kilobytes; a compressed chunk may not inflate beyond this


class CardError(Exception):
    """A character card that cannot be read; str(exc) is one sentence."""


@dataclass(frozen=True)
class Card:
    """The fields of a character card that go into prompts."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""

    def substitute(self, text: str, *, user: str = "User") -> str:
        """``text`` with ``{{char}}``/``<BOT>`` as the card's name and ``{{user}}``/``<USER>`` as ``user``."""

        def value(match: re.Match[str]) -> str:
            word = (match.group(1) or match.group(2)).lower()
            return self.name if word in ("char", "bot") else user

        return _MACRO.sub(value, text)

    def apply(self, messages: list[dict[str, Any]], *, user: str = "User", layout: str = "chat") -> list[dict[str, Any]]:
        """New messages: the character's system context, its first message, the history, its last instructions.

        ``layout`` is for templates that refuse that shape: ``"system"`` puts the first message and the
        last instructions into the one system message; ``"user"`` puts all of it at the head of the
        first user message (for templates without a system role).
        """
        if layout != "chat":
            return self._folded(messages, user=user, into=layout)
        lead = 0
        while lead < len(messages) and messages[lead].get("role") in ("system", "developer"):
            lead += 1
        own_system = "\n\n".join(t for t in (_text(m.get("content")) for m in messages[:lead]) if t)
        history = [self._substituted(m, user) for m in messages[lead:]]

        out: list[dict[str, Any]] = []
        context = self._context(own_system, user)
        if context:
            out.append({"role": "system", "content": context})
        if self.first_mes and not (history and history[0].get("role") == "assistant"):
            out.append({"role": "assistant", "content": self.substitute(self.first_mes, user=user)})
        out.extend(history)
        if self.post_history_instructions:
            note = {"role": "system", "content": self.substitute(_ORIGINAL.sub("", self.post_history_instructions), user=user)}
            at = len(out) - 1 if history and history[-1].get("role") == "assistant" else len(out)
            out.insert(at, note)
        return out

    def _folded(self, messages: list[dict[str, Any]], *, user: str, into: str) -> list[dict[str, Any]]:
        lead = 0
        while lead < len(messages) and messages[lead].get("role") in ("system", "developer"):
            lead += 1
        own_system = "\n\n".join(t for t in (_text(m.get("content")) for m in messages[:lead]) if t)
        history = [self._substituted(m, user) for m in messages[lead:]]
        parts = [self._context(own_system, user)]
        if self.first_mes and not (history and history[0].get("role") == "assistant"):
            parts.append(f"{self.name}: {self.substitute(self.first_mes, user=user)}")
        if self.post_history_instructions:
            parts.append(self.substitute(_ORIGINAL.sub("", self.post_history_instructions), user=user))
        context = "\n\n".join(p for p in parts if p)
        if into == "system":
            return [{"role": "system", "content": context}, *history] if context else history
        if history and history[0].get("role") == "user":
            first = history[0]
            return [{**first, "content": f"{context}\n\n{_text(first.get('content'))}"}, *history[1:]]
        return [{"role": "user", "content": context}, *history]

    def stop(self, *, user: str = "User") -> tuple[str, ...]:
        """Where the model starts speaking for the user."""
        return (f"\n{user}:",)

    def variables(self, *, user: str = "User") -> dict[str, Any]:
        """Template variables: ``char``, ``user`` and the card's texts, macros replaced."""
        return {
            "char": self.name,
            "user": user,
            "first_mes": self.substitute(self.first_mes, user=user),
            "description": self.substitute(self.description, user=user),
            "personality": self.substitute(self.personality, user=user),
            "scenario": self.substitute(self.scenario, user=user),
            "mes_example": self.substitute(self.mes_example, user=user),
        }

    def _context(self, own_system: str, user: str) -> str:
        if self.system_prompt:
            head = self.system_prompt
            if _ORIGINAL.search(head):
                head = _ORIGINAL.sub(lambda _: own_system, head)
            elif own_system:
                head = f"{head}\n{own_system}"
        else:
            head = own_system
        parts = [head, self.description]
        if self.personality:
            parts.append(f"{{{{char}}}}'s personality: {self.personality}")
        if self.scenario:
            parts.append(f"Scenario: {self.scenario}")
        parts.extend(f"***\n{block}" for block in _examples(self.mes_example))
        return self.substitute("\n".join(p.strip() for p in parts if p.strip()), user=user)

    def _substituted(self, message: dict[str, Any], user: str) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.substitute(content, user=user)}
        if isinstance(content, list):
            parts = [
                {**part, "text": self.substitute(part["text"], user=user)}
                if isinstance(part, dict) and isinstance(part.get("text"), str) else part
                for part in content
            ]
            return {**message, "content": parts}
        return dict(message)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _examples(mes_example: str) -> list[str]:
    return [block.strip() for block in _START.split(mes_example) if block.strip()]


# ---------------------------------------------------------------------------------------------------
# Loading


def load_card(path: Path) -> Card:
    """The card in ``path``: a V2 (or V1) card as ``.json``, or a PNG with its ``chara`` text chunk."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CardError(f"no file {path}") from None
    except OSError as exc:
        raise CardError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw.startswith(_PNG_SIGNATURE):
        text = _chara_from_png(raw, path)
        try:
            raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise CardError(f"{path.name}: its 'chara' chunk is not base64 text") from None
    elif path.suffix.lower() == ".png":
        raise CardError(f"{path.name} is not a PNG file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise CardError(f"{path.name} does not hold a character card's JSON") from None
    return card_from_json(data, where=path.name)


def card_from_json(data: Any, *, where: str = "the card") -> Card:
    """A card from its parsed JSON: V2/V3 (``{"spec": "chara_card_v2", "data": {...}}``) or V1 (the fields at the top)."""
    if not isinstance(data, dict):
        raise CardError(f"{where} is not a character card: its JSON is not an object")
    spec = data.get("spec")
    if spec is not None and spec not in ("chara_card_v2", "chara_card_v3"):
        raise CardError(f"{where} is a card of spec {spec!r}; chara_card_v2 and V1 cards can be read")
    fields = data.get("data") if spec is not None or isinstance(data.get("data"), dict) else data
    if not isinstance(fields, dict):
        raise CardError(f"{where} has no 'data' object with the character's fields")
    if spec is None and "name" not in fields:
        fields = {_V1_ALIASES.get(k, k): v for k, v in fields.items()}
    values: dict[str, str] = {}
    for key in _FIELDS:
        value = fields.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise CardError(f"{where}: the field '{key}' must be a string")
        values[key] = value
    if not values["name"].strip():
        raise CardError(f"{where} has no character name")
    return Card(**values)


def _chara_from_png(raw: bytes, path: Path) -> str:
    """The text of the PNG's ``chara`` chunk (or, for a V3-only card, its ``ccv3`` chunk)."""
    found: dict[str, str] = {}
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(raw):
        (length,) = struct.unpack(">I", raw[at : at + 4])
        kind = raw[at + 4 : at + 8]
        body = raw[at + 8 : at + 8 + length]
        crc_bytes = raw[at + 8 + length : at + 12 + length]
        if len(body) < length or len(crc_bytes) < 4:
            raise CardError(f"{path.name} is a truncated PNG file")
        if struct.unpack(">I", crc_bytes)[0] != zlib.crc32(kind + body):
            raise CardError(f"{path.name} is a damaged PNG file: the {kind.decode('latin-1')} chunk fails its checksum")
        if kind in _TEXT_CHUNKS:
            keyword, text = _text_chunk(kind, body, path)
            found.setdefault(keyword, text)
        if kind == b"IEND":
            break
        at += 12 + length
    for keyword in ("chara", "ccv3"):
        if keyword in found:
            return found[keyword]
    raise CardError(f"{path.name} has no 'chara' text chunk, so it is not a character card")


def _text_chunk(kind: bytes, body: bytes, path: Path) -> tuple[str, str]:
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        raise CardError(f"{path.name} has a malformed {kind.decode()} chunk")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:], path).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2:
        raise CardError(f"{path.name} has a malformed iTXt chunk")
    compressed = rest[0] == 1
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(text, path)
    try:
        return name, text.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError(f"{path.name} has an iTXt chunk that is not UTF-8") from None


def _inflate(data: bytes, path: Path) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _MAX_TEXT)
    except zlib.error:
        raise CardError(f"{path.name} has a compressed text chunk that does not inflate") from None
    if inflater.unconsumed_tail:
        raise CardError(f"{path.name} has a compressed text chunk larger than {_MAX_TEXT // (1024 * 1024)} MiB")
    return out
