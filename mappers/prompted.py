"""For backends that take one prompt string (TGI, llama.cpp, KoboldCpp, Ollama's raw mode): the chat
rendered by the target's prompter, its character card laid in, and the stop strings that go with it."""

from __future__ import annotations

from typing import Any

from mooltiproxy.errors import MappingError
from mooltiproxy.mapping import Fanout, MapContext
from mooltiproxy.prompting import render_chat

from . import openai as oa


def chat_prompt(body: dict[str, Any], ctx: MapContext, *, server_adds_bos: bool = True) -> tuple[str, list[str]]:
    """The prompt for ``body["messages"]`` and the stop strings in force: the client's first, then the
    prompter's. Sets ``ctx.prompt`` (recorded) and ``ctx.stop`` (what answers are cut at).

    A server that tokenizes the prompt with its special tokens adds a BOS itself; the template's own
    leading BOS is then dropped, or the model would see two.
    """
    messages = oa.messages_of(body)
    prompter = ctx.prompter
    if prompter is None:
        raise MappingError(f"Target '{ctx.target.name}' has no prompter to turn messages into a prompt.")
    prompt, template_stops = render_chat(prompter, messages, tools=body.get("tools"), character=ctx.character,
                                         user=ctx.target.user_name)
    if server_adds_bos and prompter.bos_token and prompt.startswith(prompter.bos_token):
        prompt = prompt[len(prompter.bos_token):]
    ctx.prompt = prompt
    ctx.stop = merged_stops(body, template_stops)
    return prompt, ctx.stop


def completion_prompts(body: dict[str, Any], ctx: MapContext) -> tuple[list[str], list[str]]:
    """The prompts of a completions request as given, and its stop strings (the client's, then the prompter's)."""
    prompts = oa.prompts_of(body)
    ctx.prompt = prompts[0] if len(prompts) == 1 else "\n\n".join(prompts)
    ctx.stop = merged_stops(body, ctx.prompter.stop if ctx.prompter is not None else ())
    return prompts, ctx.stop


def merged_stops(body: dict[str, Any], extra: Any) -> list[str]:
    return list(dict.fromkeys([*oa.stops_of(body), *extra]))


def prompt_calls(prompts: list[str], n: int, params: dict[str, Any], *, seed_key: str, seed_max: int) -> dict[str, Any] | Fanout:
    """``{"prompt": …, **params}`` for each prompt and each of ``n`` choices, for a server whose request is
    the prompt beside its parameters and that has no ``n`` (llama.cpp, KoboldCpp); a seed steps per choice."""

    def call(prompt: str, i: int) -> dict[str, Any]:
        p = {"prompt": prompt, **params}
        if i and seed_key in p:
            p[seed_key] = oa.seed_for_choice(p[seed_key], i, seed_max)
        return p

    return oa.per_choice(prompts, n, call)
