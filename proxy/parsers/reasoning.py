"""Reasoning parsers: move a model's thinking out of the answer into ``reasoning_content``.

DeepSeek-R1 and Qwen3 think between ``<think>`` and ``</think>``. Their newer
chat templates write ``<think>`` into the prompt, so the answer may start
inside the thinking with only ``</think>`` in it. As vLLM's parsers do, text
before ``</think>`` is reasoning whether or not ``<think>`` opened it, and an
answer cut off before ``</think>`` is all reasoning.
"""

from __future__ import annotations

from typing import Literal

from proxy.parsers.base import Delta, held_suffix

_State = Literal["start", "reasoning", "after", "content"]


class ThinkReasoningParser:
    """``<think>...</think>`` (DeepSeek-R1, Qwen3, QwQ): pieces in, reasoning and content deltas out."""

    start_tag = "<think>"
    end_tag = "</think>"

    def __init__(self, reasoning_ended: bool = False) -> None:
        # reasoning_ended: the prompt already closed the thinking (Qwen3 with thinking off): all is content
        self._state: _State = "content" if reasoning_ended else "start"
        self._buf = ""

    def feed(self, piece: str) -> Delta:
        self._buf += piece
        out = Delta()
        while self._step(out):
            pass
        return out

    def finish(self) -> Delta:
        out = Delta()
        if self._state in ("start", "reasoning"):
            out.reasoning += self._buf
        elif self._state == "content":
            out.content += self._buf
        self._buf = ""
        return out

    def _step(self, out: Delta) -> bool:
        """One state's work on the buffer; True when another step may make progress."""
        if self._state == "start":
            text = self._buf.lstrip()
            if not text or (self.start_tag.startswith(text) and text != self.start_tag):
                return False  # only whitespace, or a split "<think>": wait
            self._buf = text.removeprefix(self.start_tag) if text.startswith(self.start_tag) else self._buf
            self._state = "reasoning"
            return True
        if self._state == "reasoning":
            end = self._buf.find(self.end_tag)
            if end >= 0:
                out.reasoning += self._buf[:end]
                self._buf = self._buf[end + len(self.end_tag) :]
                self._state = "after"
                return True
            keep = len(self._buf) - held_suffix(self._buf, self.end_tag)
            out.reasoning += self._buf[:keep]
            self._buf = self._buf[keep:]
            return False
        if self._state == "after":  # the blank lines between thinking and answer are neither
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._state = "content"
        out.content += self._buf
        self._buf = ""
        return False


REASONING_PARSERS = {"deepseek_r1": ThinkReasoningParser, "qwen3": ThinkReasoningParser}
