"""transformers' own chat-template renderer, the reference the proxy's prompters are held to."""

from __future__ import annotations

from typing import Any

import pytest


def transformers_render(template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """What ``apply_chat_template`` renders for ``messages`` (continuing a final assistant message as
    ``continue_final_message`` does), or ``RAISES <error type>`` when it refuses them."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    continuing = messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    try:
        rendered, _ = utils.render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=not continuing,
            continue_final_message=continuing,
            **kwargs,
        )
    except Exception as exc:  # transformers raises jinja's TemplateError, or ValueError for an impossible continuation
        return f"RAISES {type(exc).__name__}"
    return str(rendered[0])
