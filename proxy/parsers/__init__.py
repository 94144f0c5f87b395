"""Parsers over generated text: tool calls and reasoning, beside the response shaper.

The shaper feeds each choice's text pieces to an :class:`OutputParser` and
puts what comes out into ``content``, ``reasoning_content`` and
``tool_calls``. The parsers know nothing of HTTP or of the shaper.
"""

from __future__ import annotations

from proxy.parsers.base import Delta, TextParser, ToolCall, ToolCallDelta, call_id, merge_tool_calls
from proxy.parsers.reasoning import REASONING_PARSERS, ThinkReasoningParser
from proxy.parsers.tools import TOOL_PARSERS, HermesToolParser, Llama3JsonToolParser, MistralToolParser

__all__ = [
    "REASONING_PARSERS",
    "TOOL_PARSERS",
    "Delta",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "OutputParser",
    "TextParser",
    "ThinkReasoningParser",
    "ToolCall",
    "ToolCallDelta",
    "call_id",
    "merge_tool_calls",
    "parse_whole",
]


class OutputParser:
    """Reasoning first, then tool calls in what is left: pieces of one choice in, deltas out."""

    def __init__(
        self,
        tool_parser: str | None = None,
        reasoning_parser: str | None = None,
        streamed: bool = True,
        reasoning_ended: bool = False,
    ) -> None:
        self.tools: TextParser | None = None
        if tool_parser == "hermes":
            self.tools = HermesToolParser(stream_arguments=streamed)
        elif tool_parser:
            self.tools = TOOL_PARSERS[tool_parser]()
        self.reasoning = ThinkReasoningParser(reasoning_ended) if reasoning_parser else None

    @property
    def called(self) -> bool:
        """Whether any tool call was found (the finish reason is then ``tool_calls``)."""
        return bool(self.tools is not None and self.tools.calls)

    def feed(self, piece: str) -> Delta:
        if self.reasoning is None:
            return self.tools.feed(piece) if self.tools is not None else Delta(content=piece)
        return self._after_reasoning(self.reasoning.feed(piece), False)

    def finish(self) -> Delta:
        return self._after_reasoning(self.reasoning.finish() if self.reasoning else Delta(), True)

    def _after_reasoning(self, delta: Delta, last: bool) -> Delta:
        if self.tools is None:
            return delta
        out = Delta(reasoning=delta.reasoning)
        out.add(self.tools.feed(delta.content))
        if last:
            out.add(self.tools.finish())
        return out


def parse_whole(parser: OutputParser, text: str) -> Delta:
    """A whole answer: the stream fed at once."""
    return parser.feed(text).add(parser.finish())
