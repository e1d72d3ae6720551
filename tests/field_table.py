"""The README's table of the request fields each target type honours, read back so that each backend's tests hold
its "refused" cells to what the backend refuses; and the one way those tests send a field."""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from .conftest import ROOT

HEADING = "### Which request fields each target type honours"
# Values of fields no prompt-string backend can honour, as a client would send them.
AUDIO = {"voice": "alloy", "format": "wav"}
PREDICTION = {"type": "content", "content": "Hello there"}


def refused(kind: str) -> set[str]:
    """The fields the table says a target of type ``kind`` refuses: each row's first field, where its cell says so."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text[text.index(HEADING):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i, line in enumerate(lines[start:], start) if not line.startswith("|"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:end]]
    column = [cell.strip("`") for cell in rows[0]].index(kind)
    return {re.findall(r"`([a-z_]+)`", row[0])[0] for row in rows[2:] if "refused" in row[column]}


def send(client: openai.OpenAI, api: str, model: str, extra: dict[str, Any]) -> None:
    """A chat (``api`` "chat") or a completion with ``extra`` in its body, through the OpenAI SDK."""
    if api == "chat":
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi!"}], extra_body=extra)
    else:
        client.completions.create(model=model, prompt="Once", extra_body=extra)


def refused_by_name(client: openai.OpenAI, api: str, model: str, extra: dict[str, Any], field: str, seen: list[Any],
                    target: str = "local") -> None:
    """The request is a 400 whose ``param`` is ``field`` and whose message names the target, and nothing reached the stub
    upstream (``seen``: what it was sent)."""
    sent = len(seen)
    with pytest.raises(openai.BadRequestError, match=rf"(?i)target '{target}'") as info:
        send(client, api, model, extra)
    assert info.value.param == field and len(seen) == sent
