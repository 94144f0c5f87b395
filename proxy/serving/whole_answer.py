"""One whole answer made from a streamed one (a whole answer with stop strings is streamed from the upstream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class WholeAnswer:
    """A whole answer made from a streamed one: the upstream is asked to stream when stop strings are set,
    so that it can be cut off as soon as every choice has stopped, and the client still gets one body.

    Yields one batch of one event (the shape :class:`ResponseShaper` gives a whole answer), built from
    the client-shaped chunks: each choice's text joined, its logprobs joined, its last finish_reason.
    """

    def __init__(self, batches: Iterator[list[dict[str, Any]]], kind: str) -> None:
        self._batches = batches
        self._kind = kind
        self._done = False

    def __iter__(self) -> WholeAnswer:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        if self._done:
            raise StopIteration
        self._done = True
        chunks = [chunk for batch in self._batches for chunk in batch]
        return [merge_chunks(chunks, self._kind)]

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def merge_chunks(chunks: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Client-shaped stream chunks (chat or completion) as the one whole answer they add up to."""
    texts: dict[int, list[str]] = {}
    thoughts: dict[int, list[str]] = {}  # reasoning_content (SGP_REASONING_PARSER)
    calls: dict[int, dict[int, dict[str, Any]]] = {}  # tool calls by call index (SGP_TOOL_PARSER)
    logprobs: dict[int, Any] = {}
    reasons: dict[int, str | None] = {}
    usage = None
    for chunk in chunks:
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            piece = choice.get("text") if kind == "completion" else delta.get("content")
            texts.setdefault(index, []).append(piece or "")
            if delta.get("reasoning_content"):
                thoughts.setdefault(index, []).append(delta["reasoning_content"])
            for fragment in delta.get("tool_calls") or ():
                _join_call(calls.setdefault(index, {}), fragment)
            if choice.get("logprobs"):
                logprobs[index] = _join_logprobs(logprobs.get(index), choice["logprobs"])
            if choice.get("finish_reason") is not None or index not in reasons:
                reasons[index] = choice.get("finish_reason")
    first = chunks[0] if chunks else {}
    choices = []
    for index in sorted(texts):
        text = "".join(texts[index])
        if kind == "completion":
            choice = {"index": index, "text": text}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls.get(index) else "")}
            if index in thoughts:
                message["reasoning_content"] = "".join(thoughts[index])
            if calls.get(index):
                message["tool_calls"] = [calls[index][i] for i in sorted(calls[index])]
            choice = {"index": index, "message": message}
        choices.append({**choice, "logprobs": logprobs.get(index), "finish_reason": reasons.get(index)})
    return {
        "id": first.get("id"),
        "object": "text_completion" if kind == "completion" else "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": choices,
        "usage": usage,
    }


def _join_call(calls: dict[int, dict[str, Any]], fragment: dict[str, Any]) -> None:
    """A streamed tool-call fragment added to its call (the first brings id and name, the rest arguments)."""
    call = calls.get(fragment["index"])
    function = fragment.get("function") or {}
    if call is None:
        calls[fragment["index"]] = {
            "id": fragment.get("id"),
            "type": "function",
            "function": {"name": function.get("name"), "arguments": function.get("arguments") or ""},
        }
    else:
        call["function"]["arguments"] += function.get("arguments") or ""


def _join_logprobs(before: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """Logprobs of consecutive chunks joined: every list field (tokens, content, ...) concatenated."""
    if before is None:
        return dict(more)
    return {k: before.get(k, []) + v if isinstance(v, list) else before.get(k, v) for k, v in more.items()}
