"""Several upstream answers made into one OpenAI answer: choices numbered in order, usage added up,
streams interleaved as their events arrive under one id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..dataset.records import RecordOnly

_END = object()


def merge_answers(answers: Sequence[dict[str, Any]], distinct_prompts: int) -> dict[str, Any]:
    """One answer from several; ``prompt_tokens`` is counted once per distinct prompt, as OpenAI does for n."""
    merged = dict(answers[0])
    choices: list[dict[str, Any]] = []
    for answer in answers:
        for choice in answer.get("choices") or []:
            choices.append({**choice, "index": len(choices)})
    merged["choices"] = choices
    usages = [a["usage"] for a in answers if isinstance(a.get("usage"), dict)]
    if usages:
        per_prompt = max(1, len(answers) // max(1, distinct_prompts))
        prompt = sum(u.get("prompt_tokens", 0) for u in usages[::per_prompt])
        completion = sum(u.get("completion_tokens", 0) for u in usages)
        merged["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return merged


async def merge_streams(streams: Sequence[AsyncIterator[dict[str, Any]]], distinct_prompts: int) -> AsyncIterator[dict[str, Any]]:
    """Events of stream ``i`` come out as choice ``i``; usage chunks are held and added into one at the end."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for event in stream:
                await queue.put((i, event))
            await queue.put((i, _END))
        except BaseException as exc:
            await queue.put((i, exc))
            raise

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    head: dict[str, Any] | None = None
    usages: list[tuple[int, dict[str, Any]]] = []
    unasked = False  # the usage chunks were for the record only (the client did not ask for usage)
    open_streams = len(tasks)
    try:
        while open_streams:
            i, event = await queue.get()
            if event is _END:
                open_streams -= 1
                continue
            if isinstance(event, BaseException):
                raise event
            if head is None:
                head = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
            if not event.get("choices") and isinstance(event.get("usage"), dict):
                usages.append((i, event["usage"]))
                unasked = event.__class__ is RecordOnly
                continue
            out = {**event, **head}
            out["choices"] = [{**c, "index": i} for c in event.get("choices") or []]
            yield out
        if usages and head is not None:
            usages.sort(key=lambda u: u[0])
            per_prompt = max(1, len(streams) // max(1, distinct_prompts))
            prompt = sum(u.get("prompt_tokens", 0) for i, u in usages if i % per_prompt == 0)
            completion = sum(u.get("completion_tokens", 0) for _, u in usages)
            total = {**head, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                      "total_tokens": prompt + completion}}
            yield RecordOnly(total) if unasked else total
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
