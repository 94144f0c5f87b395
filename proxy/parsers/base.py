"""What every output parser shares: the deltas it produces and helpers for tags split across pieces.

A parser is fed the generated text piece by piece and answers each piece with
a :class:`Delta` (content, reasoning, tool-call fragments). A whole answer is
the stream fed at once, so streamed and whole answers take one path and agree.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Protocol

_ALPHANUMERIC = string.ascii_letters + string.digits


def call_id() -> str:
    """A fresh tool-call id in OpenAI's style (``call_`` + 24 random characters)."""
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


def mistral_call_id() -> str:
    """Mistral's templates accept only 9 alphanumeric characters as a call id."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))


@dataclass
class ToolCallDelta:
    """One fragment of one tool call; ``id`` and ``name`` come with the call's first fragment only."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI stream shape: ``{index, id, type, function: {name, arguments}}`` (id/type/name first only)."""
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        function["arguments"] = self.arguments
        out["function"] = function
        return out


@dataclass
class Delta:
    """What one piece of generated text turned into."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def add(self, other: Delta) -> Delta:
        """Append ``other`` (in order) to this delta; returns self."""
        self.content += other.content
        self.reasoning += other.reasoning
        for fragment in other.tool_calls:
            self.push(fragment)
        return self

    def push(self, fragment: ToolCallDelta) -> None:
        """Add a tool-call fragment; one that continues the last fragment's call joins it."""
        last = self.tool_calls[-1] if self.tool_calls else None
        if last is not None and last.index == fragment.index and fragment.id is None:
            last.arguments += fragment.arguments
        else:
            self.tool_calls.append(fragment)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


@dataclass
class ToolCall:
    """A complete tool call, as a whole answer's ``message.tool_calls`` holds it."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def merge_tool_calls(fragments: list[ToolCallDelta]) -> list[ToolCall]:
    """Stream fragments joined per index, as an OpenAI client joins them."""
    calls: dict[int, ToolCall] = {}
    for fragment in fragments:
        call = calls.get(fragment.index)
        if call is None:
            calls[fragment.index] = ToolCall(fragment.id or "", fragment.name or "", fragment.arguments)
        else:
            call.arguments += fragment.arguments
    return [calls[i] for i in sorted(calls)]


class TextParser(Protocol):
    """The incremental interface every parser implements."""

    calls: int  # tool calls found so far (tool parsers)

    def feed(self, piece: str) -> Delta:
        """The delta for the next piece of text (text that may still turn into a tag is held back)."""
        ...

    def finish(self) -> Delta:
        """The delta for what was held back, at the end of the answer."""
        ...


def held_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is the start of ``tag`` (a tag split across pieces)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
