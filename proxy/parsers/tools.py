"""Tool-call parsers: find the calls a model writes in its text, as vLLM's ``--tool-call-parser`` does.

* ``hermes`` (Hermes 2/3, Qwen2.5, Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  any number of them, text before a call staying content. A streamed call's
  arguments are sent in fragments as they are generated, once ``{"name": "...",
  "arguments": {`` has been seen; before that (and in a whole answer) a call
  is sent only when it parses. So a stream cut off inside the arguments
  (``max_tokens``) ends with those arguments incomplete, where the whole
  answer keeps that text as content.
* ``llama3_json`` (Llama 3.1/3.2/3.3): the whole answer is one or more JSON objects
  ``{"name": ..., "parameters": {...}}`` separated by ``;``, optionally after
  ``<|python_tag|>``; an answer that starts otherwise is plain content.
* ``mistral``: ``[TOOL_CALLS]`` followed by a JSON list of calls, or (newer
  tokenizers) by ``name{arguments}`` / ``name[ARGS]{arguments}``.

Text that looks like a call but does not parse stays content, untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxy.parsers.base import Delta, ToolCallDelta, call_id, held_suffix, mistral_call_id

_HERMES_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def _call_fields(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of one decoded call object, or None when it is not a call."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return name, arguments


def _dump(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False)


class _Content:
    """Content with its trailing whitespace held back: the blank line before a call is not content."""

    def __init__(self) -> None:
        self.held = ""

    def add(self, out: Delta, text: str) -> None:
        body = text.rstrip()
        if body:
            out.content += self.held + body
            self.held = text[len(body) :]
        else:
            self.held += text

    def finish(self, out: Delta, calls: int) -> None:
        if not calls:  # a plain answer keeps every character
            out.content += self.held
        self.held = ""


@dataclass
class _OpenCall:
    """A hermes call whose name went out; its arguments stream as they come."""

    index: int
    args_start: int  # where the unsent arguments start in the buffer (what was sent is dropped from it)


class HermesToolParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

    start_tag = "<tool_call>"
    end_tag = "</tool_call>"

    def __init__(self, new_id: Callable[[], str] = call_id, stream_arguments: bool = True) -> None:
        self.new_id = new_id
        # False for a whole answer: a call then goes out only if it parses, even one cut off at the end
        self.stream_arguments = stream_arguments
        self.calls = 0
        self._buf = ""  # text not yet settled (inside a call: the call body so far)
        self._scan = 0  # inside a call: the end tag is not before here (each piece is searched once)
        self._in_call = False
        self._open: _OpenCall | None = None
        self._content = _Content()

    def feed(self, piece: str) -> Delta:
        out = Delta()
        if not self._in_call and not self._buf and "<" not in piece:  # plain text: the common case
            self._content.add(out, piece)
            return out
        self._buf += piece
        while self._step(out):
            pass
        return out

    def finish(self) -> Delta:
        out = Delta()
        if self._in_call:  # the answer ended inside a call: accept it if it parses (as vLLM does)
            self._close(out, self._buf, closed=False)
        else:
            self._content.add(out, self._buf)
        self._buf = ""
        self._in_call = False
        self._content.finish(out, self.calls)
        return out

    def _step(self, out: Delta) -> bool:
        if not self._in_call:
            start = self._buf.find(self.start_tag)
            if start < 0:
                keep = len(self._buf) - held_suffix(self._buf, self.start_tag)
                self._content.add(out, self._buf[:keep])
                self._buf = self._buf[keep:]
                return False
            self._content.add(out, self._buf[:start])
            self._buf = self._buf[start + len(self.start_tag) :]
            self._in_call = True
            self._scan = 0
            return True
        end = self._buf.find(self.end_tag, self._scan)
        if end >= 0:
            body, self._buf = self._buf[:end], self._buf[end + len(self.end_tag) :]
            self._in_call = False
            self._close(out, body, closed=True)
            return True
        self._scan = max(0, len(self._buf) - len(self.end_tag) + 1)
        if self.stream_arguments:
            self._stream_arguments(out)
        return False

    def _stream_arguments(self, out: Delta) -> None:
        """Send the name once it is certain, then the arguments text that can no longer be the wrapper's end."""
        if self._open is None:
            header = _HERMES_HEADER.match(self._buf)
            if header is None or len(self._buf) <= header.end() or self._buf[header.end()] != "{":
                return
            try:
                name = json.loads('"' + header.group(1) + '"')
            except ValueError:
                return
            if not name:
                return
            self._open = _OpenCall(self.calls, header.end())
            self.calls += 1
            self._content.held = ""
            out.push(ToolCallDelta(self._open.index, "", id=self.new_id(), name=name))
        end = len(self._buf) - held_suffix(self._buf, self.end_tag)  # a split end tag is not arguments
        self._send(out, end)

    def _send(self, out: Delta, end: int) -> None:
        """Send the arguments up to ``end`` in the buffer, less what may still be the wrapper's end.

        Only whitespace, the wrapper's ``}`` and the end tag can follow the
        arguments, so a ``}`` with nothing but whitespace after it is held back
        (as is that whitespace) until more text shows it was not the last.
        """
        call = self._open
        assert call is not None
        buf, start = self._buf, call.args_start
        while end > start and buf[end - 1].isspace():
            end -= 1
        if end > start and buf[end - 1] == "}":
            end -= 1
            while end > start and buf[end - 1].isspace():
                end -= 1
        if end > start:
            out.push(ToolCallDelta(call.index, buf[start:end]))
            self._buf = buf[end:]  # the buffer keeps only what is not sent: it stays small
            self._scan = 0
            call.args_start = 0

    def _close(self, out: Delta, body: str, closed: bool) -> None:
        if self._open is not None:  # already streaming: send the rest of the arguments as written
            self._buf, rest = body, self._buf  # _send reads the body from the buffer
            self._send(out, len(body))
            self._buf = rest
            self._open = None
            return
        parsed = self._parse(body)
        if parsed is None:
            self._content.add(out, self.start_tag + body + (self.end_tag if closed else ""))
            return
        name, arguments = parsed
        self._content.held = ""
        out.push(ToolCallDelta(self.calls, arguments, id=self.new_id(), name=name))
        self.calls += 1

    @staticmethod
    def _parse(body: str) -> tuple[str, str] | None:
        """(name, arguments text) of a whole call body; the arguments as written when a stream would send that."""
        try:
            fields = _call_fields(json.loads(body))
        except ValueError:
            return None
        if fields is None:
            return None
        name, arguments = fields
        header = _HERMES_HEADER.match(body)
        if header is not None and body[header.end() : header.end() + 1] == "{":
            rest = body[header.end() :].rstrip()
            raw = rest[:-1].rstrip() if rest.endswith("}") else rest
            try:
                if json.loads(raw) == arguments:
                    return name, raw
            except ValueError:
                pass
        return name, _dump(arguments)


def _decode_calls(text: str, separator: str) -> list[tuple[str, dict[str, Any]]] | None:
    """JSON call objects one after another (``separator`` between them), or None if any is not a call."""
    decoder = json.JSONDecoder()
    calls = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        fields = _call_fields(obj)
        if fields is None:
            return None
        calls.append(fields)
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == separator:
            pos += 1
            while pos < len(text) and text[pos].isspace():
                pos += 1
        elif pos < len(text):
            return None
    return calls or None


class Llama3JsonToolParser:
    """``{"name": ..., "parameters": {...}}`` (``; `` between calls), the whole answer or none of it."""

    python_tag = "<|python_tag|>"

    def __init__(self, new_id: Callable[[], str] = call_id) -> None:
        self.new_id = new_id
        self.calls = 0
        self._buf = ""
        self._mode: Literal["undecided", "text", "json"] = "undecided"

    def feed(self, piece: str) -> Delta:
        self._buf += piece
        if self._mode == "undecided":
            start = self._buf.lstrip()
            if not start or (self.python_tag.startswith(start) and start != self.python_tag):
                return Delta()
            self._mode = "json" if start.startswith(("{", self.python_tag)) else "text"
        if self._mode == "text":
            out, self._buf = Delta(content=self._buf), ""
            return out
        return Delta()  # a call is only certain once the answer is complete

    def finish(self) -> Delta:
        text, self._buf = self._buf, ""
        if self._mode != "json":
            return Delta(content=text)
        calls = _decode_calls(text.strip().removeprefix(self.python_tag), ";")
        if calls is None:
            return Delta(content=text)
        out = Delta()
        for name, arguments in calls:
            out.push(ToolCallDelta(self.calls, _dump(arguments), id=self.new_id(), name=name))
            self.calls += 1
        return out


_MISTRAL_NAME = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[ARGS\])?\s*")


class MistralToolParser:
    """``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` or ``[TOOL_CALLS]name{...}``; text before stays content."""

    bot_tag = "[TOOL_CALLS]"

    def __init__(self, new_id: Callable[[], str] = mistral_call_id) -> None:
        self.new_id = new_id
        self.calls = 0
        self._buf = ""
        self._in_calls = False
        self._content = _Content()

    def feed(self, piece: str) -> Delta:
        self._buf += piece
        out = Delta()
        if self._in_calls:
            return out
        start = self._buf.find(self.bot_tag)
        if start >= 0:
            self._content.add(out, self._buf[:start])
            self._buf = self._buf[start:]
            self._in_calls = True
            return out
        keep = len(self._buf) - held_suffix(self._buf, self.bot_tag)
        self._content.add(out, self._buf[:keep])
        self._buf = self._buf[keep:]
        return out

    def finish(self) -> Delta:
        out = Delta()
        text, self._buf = self._buf, ""
        calls = self._parse(text) if self._in_calls else None
        if calls is None:
            self._content.add(out, text)
        else:
            self._content.held = ""
            for name, arguments in calls:
                out.push(ToolCallDelta(self.calls, _dump(arguments), id=self.new_id(), name=name))
                self.calls += 1
        self._content.finish(out, self.calls)
        return out

    def _parse(self, text: str) -> list[tuple[str, dict[str, Any]]] | None:
        calls: list[tuple[str, dict[str, Any]]] = []
        for segment in text.split(self.bot_tag)[1:]:
            segment = segment.strip()
            if segment.startswith("["):  # a JSON list of {"name", "arguments"}
                try:
                    items = json.loads(segment)
                except ValueError:
                    return None
                if not isinstance(items, list) or not items:
                    return None
                for item in items:
                    fields = _call_fields(item)
                    if fields is None:
                        return None
                    calls.append(fields)
                continue
            pos = 0
            while pos < len(segment):  # name{arguments}, possibly several
                match = _MISTRAL_NAME.match(segment, pos)
                if match is None or not match.group(1):
                    return None
                try:
                    arguments, pos = json.JSONDecoder().raw_decode(segment, match.end())
                except ValueError:
                    return None
                if not isinstance(arguments, dict):
                    return None
                calls.append((match.group(1), arguments))
                while pos < len(segment) and (segment[pos].isspace() or segment[pos] == ","):
                    pos += 1
        return calls or None


TOOL_PARSERS: dict[str, type[HermesToolParser | Llama3JsonToolParser | MistralToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}
