"""Incremental detokenization with stop strings.

Why: streamed pieces must concatenate exactly to the whole text, a piece must
never end inside a multi-byte character, and a stop string must never leak out
half-emitted. We decode the full generated id list each step and emit the new
suffix, holding back a trailing U+FFFD and the last ``len(longest stop) - 1``
characters until they are safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"


class TextAssembler:
    """Turns token ids into safe text pieces for one choice."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded text so far (cut at a stop string, once found)
        self.emitted = ""  # what has been handed out as pieces
        self.stop_reason: str | None = None

    def add(self, token_id: int) -> str:
        """Append a token; return the new text piece that is safe to emit (maybe "")."""
        previous_len = len(self.text)
        self.ids.append(token_id)
        self.text = self._decode(self.ids)
        if self._stop:
            # a little slack: a trailing U+FFFD run can shrink into one character
            start = max(0, previous_len - self._holdback - 4)
            hits = [(idx, s) for s in self._stop if (idx := self.text.find(s, start)) != -1]
            if hits:
                idx, stop = min(hits)
                self.text = self.text[:idx]
                self.stop_reason = stop
                return self.flush()
        safe = self.text.rstrip(REPLACEMENT_CHAR)
        if self._holdback:
            safe = safe[: max(len(self.emitted), len(safe) - self._holdback)]
        return self._emit_up_to(safe)

    def flush(self) -> str:
        """Return everything not yet emitted (the choice is finished)."""
        return self._emit_up_to(self.text)

    def _emit_up_to(self, target: str) -> str:
        if len(target) <= len(self.emitted):
            return ""
        piece = target[len(self.emitted) :]
        self.emitted += piece
        return piece
