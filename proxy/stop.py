"""Stop sequences, applied by the proxy to the decoded answer.

A client's ``stop`` strings are its text: they never go upstream. The proxy
finds them itself in each choice's text as it arrives (after decryption, when
the proxy decrypts), sends what comes before the first match, drops the match
and everything after it, and ends that choice with ``finish_reason: "stop"``.
A match can span pieces, so the end of what has arrived that could still be
the start of a stop string is held back until the next piece decides. Once
every choice of a streamed answer has stopped, the upstream request is closed
(vLLM aborts a request whose connection closes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

MAX_STOP_CHARS = 512  # longer stop strings are refused: the hold-back check is quadratic in their length


class StopMatcher:
    """The stop strings of one choice, over its text arriving in pieces."""

    __slots__ = ("_hold", "_pending", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""  # received, not yet sent: it may be the start of a stop string
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be sent now; nothing once a stop string has been seen."""
        if self.stopped:
            return ""
        text = self._pending + piece if self._pending else piece
        # the first stop string to be complete (earliest end, then earliest start), as if the text came a
        # character at a time: what is sent never depends on how the upstream cut the text into pieces
        hit = min(((i + len(s), i) for s in self._stops if (i := text.find(s)) >= 0), default=None)
        if hit is not None:
            self.stopped = True
            self._pending = ""
            return text[: hit[1]]
        keep = self._partial(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, when the choice ended without a stop string."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _partial(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string (and is shorter than it)."""
        for k in range(min(self._hold, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """The request's ``stop`` as a list of non-empty strings."""
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


class StopSequences:
    """Stop matching for every choice of one answer; knows when all expected choices have stopped."""

    def __init__(self, stops: Sequence[str], choices: int, count_tokens: Callable[[str], int] | None = None) -> None:
        self._stops = list(stops)
        self._choices = choices
        self._matchers: dict[int, StopMatcher] = {}
        self._count_tokens = count_tokens
        self._received: dict[int, list[str]] = {}  # every choice's text as the upstream sent it (for usage)

    def stopped(self, index: int) -> bool:
        matcher = self._matchers.get(index)
        return matcher is not None and matcher.stopped

    def apply(self, index: int, piece: str, last: bool) -> tuple[str, bool]:
        """(text to send, whether this choice stopped here) for one upstream piece; ``last``: the upstream
        ended this choice with this piece (what was held back goes out with it)."""
        matcher = self._matchers.get(index)
        if matcher is None:
            matcher = self._matchers[index] = StopMatcher(self._stops)
        if self._count_tokens is not None:
            self._received.setdefault(index, []).append(piece)
        text = matcher.feed(piece)
        if matcher.stopped:
            return text, True
        return (text + matcher.flush(), False) if last else (text, False)

    @property
    def finished(self) -> bool:
        """Every expected choice has stopped: nothing more of the upstream's answer will be sent."""
        return len(self._matchers) >= self._choices and all(m.stopped for m in self._matchers.values())

    def completion_tokens(self) -> int:
        """The tokens the upstream sent before it was cut off, counted again with the model's tokenizer."""
        count = self._count_tokens or (lambda _text: 0)
        return sum(count("".join(pieces)) for pieces in self._received.values())


def cut_logprobs(logprobs: dict[str, Any] | None, keep_chars: int) -> dict[str, Any] | None:
    """Completion-shaped logprobs cut to the tokens that begin within the first ``keep_chars`` characters."""
    if not logprobs or not isinstance(logprobs.get("tokens"), list):
        return logprobs
    kept, length = 0, 0
    for token in logprobs["tokens"]:
        if length >= keep_chars:
            break
        length += len(token or "")
        kept += 1
    return {k: v[:kept] if isinstance(v, list) else v for k, v in logprobs.items()}


def cut_chat_logprobs(logprobs: dict[str, Any] | None, keep_chars: int) -> dict[str, Any] | None:
    """Chat-shaped logprobs (``{"content": [{"token": ...}]}``) cut the same way."""
    if not logprobs or not isinstance(logprobs.get("content"), list):
        return logprobs
    kept, length = 0, 0
    for item in logprobs["content"]:
        if length >= keep_chars:
            break
        length += len(item.get("token") or "")
        kept += 1
    return {**logprobs, "content": logprobs["content"][:kept]}


class UntilStopped:
    """Shaped batches of an upstream reply; once every choice has stopped, a last batch and the reply is closed.

    A class, not a generator, so that :meth:`close` reaches the reply even if iteration never started.
    """

    def __init__(
        self,
        batches: Iterable[list[dict[str, Any]]],
        shape: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        close: Callable[[], None],
        stops: StopSequences | None = None,
        closing: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._batches: Iterator[list[dict[str, Any]]] = iter(batches)
        self._shape = shape
        self._close = close
        self._stops = stops
        self._closing = closing
        self._ended = False

    def __iter__(self) -> UntilStopped:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        if self._ended:
            raise StopIteration
        shaped = self._shape(next(self._batches))
        if self._stops is not None and self._stops.finished:
            self._ended = True
            self.close()  # the upstream stops generating: the answer is complete
            if self._closing is not None:
                shaped = shaped + self._closing()
        return shaped

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        self._close()


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
