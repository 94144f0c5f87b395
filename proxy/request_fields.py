"""OpenAI request fields the proxy does not honour, and that would change the answer: a 400, never ignored.

Unknown fields are ignored (as vLLM does), and so are the OpenAI fields that
ask for a service this proxy does not give and whose absence leaves the answer
as it is (``store``, ``metadata``, ``service_tier``, prompt-cache hints ...).
But a client that sets ``logit_bias`` or ``audio`` expects a different answer
than it would get without them: silently dropping such a field hands it a
wrong answer that looks right. Each field below is refused when it asks for
something (a value equal to the default, ``[]`` or ``"none"``, say, passes).
docs/request-fields.md lists every field and what happens to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.errors import BadRequestError

Harmless = Callable[[Any], bool]  # the value asks for nothing: the field may be ignored


def _none(value: Any) -> bool:
    return value is None


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


YET = "is not supported by this proxy yet"
LEAKS = "is refused: the token ids it favours would tell the inference service what the conversation is about"

CHAT_REFUSED: dict[str, tuple[Harmless, str]] = {
    "functions": (_empty, "is the deprecated form of tools: send tools (and tool_choice) instead"),
    "function_call": (lambda v: v in (None, "none"), "is the deprecated form of tool_choice: send tool_choice instead"),
    "reasoning_effort": (_none, f"{YET} (reasoning controls)"),
    "verbosity": (_none, YET),
    "logit_bias": (_empty, LEAKS),
    "audio": (_none, "is not supported: the answer is text"),
    "modalities": (lambda v: v is None or v == ["text"], 'is not supported beyond ["text"]'),
    "web_search_options": (_none, "is not supported: there is no web search here"),
    "moderation": (_none, "is not supported: there is no moderation here"),
}

COMPLETION_REFUSED: dict[str, tuple[Harmless, str]] = {
    "logit_bias": (_empty, LEAKS),
    "best_of": (lambda v: v in (None, 1), "is not supported (nor by vLLM's current engine); use n"),
    "suffix": (lambda v: v in (None, ""), "is not supported: it would have to go upstream as text"),
}

MESSAGE_REFUSED: dict[str, tuple[Harmless, str]] = {
    "function_call": (_none, "is the deprecated form of tool_calls: send tool_calls instead"),
    "audio": (_none, "is not supported: only text"),
    "refusal": (_none, YET),
}


def refuse(table: Mapping[str, tuple[Harmless, str]], data: Any, where: str = "") -> None:
    """A 400 naming the first field of ``table`` in ``data`` that asks for something."""
    if not isinstance(data, Mapping):
        return
    for name, (harmless, why) in table.items():
        if name in data and not harmless(data[name]):
            raise BadRequestError(f"{where}{name} {why}", param=where + name, code="unsupported_field")


def refuse_chat(data: Any) -> Any:
    """A chat request's body, unchanged, or a 400 for a field (its own or a message's) that is refused."""
    refuse(CHAT_REFUSED, data)
    messages = data.get("messages") if isinstance(data, Mapping) else None
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            refuse(MESSAGE_REFUSED, message, f"messages.{i}.")
    return data


def refuse_completion(data: Any) -> Any:
    """A completions request's body, unchanged, or a 400 for a refused field."""
    refuse(COMPLETION_REFUSED, data)
    return data
