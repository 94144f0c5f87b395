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

from collections.abc import Callable, Sequence
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
