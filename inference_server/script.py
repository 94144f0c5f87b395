"""Scripted output: answer given texts whatever the prompt, for tests and demos of tool calling.

A tiny random model cannot write a tool call, and no model here writes one on
demand. In scripted mode (``--script [FILE]``) each generated choice takes the
next scripted answer: first from a queue that ``POST /script`` fills
(``{"answers": ["...", ...]}``), then from FILE (a JSON list of strings, taken
in turn, round and round). With neither, the model answers as usual. The
request is still parsed and its ``prompt_embeds`` decoded and checked as
always; only the text generated differs. The answer streams in small pieces
(a few characters each) so that tags split across pieces, as real tokens do.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inference_server.detokenize import TextAssembler
from inference_server.generation import Engine, Prompt, Step, TokenLogprob
from inference_server.sampling import SamplingParams

_PIECES = re.compile(r"\s*[^\s<]{1,4}|\s*<|\s+")  # up to 4 characters; every "<" starts a piece


class Script:
    """The answers still to give; safe to share between request threads."""

    def __init__(self, answers: Sequence[str] = ()) -> None:
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._cycle = list(answers)
        self._next = 0

    @classmethod
    def from_file(cls, path: str | None) -> Script:
        """``path``: a JSON list of strings (None or "": an empty script, filled by ``POST /script``)."""
        if not path:
            return cls()
        answers = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path} must hold a JSON list of strings")
        return cls(answers)

    def push(self, answers: Sequence[str]) -> int:
        """Queue answers ahead of the file's; returns how many are queued now."""
        with self._lock:
            self._queue.extend(answers)
            return len(self._queue)

    def take(self) -> str | None:
        """The next answer, or None when there is none (the engine answers)."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if not self._cycle:
                return None
            answer = self._cycle[self._next % len(self._cycle)]
            self._next += 1
            return answer


def pieces_of(text: str) -> list[str]:
    """The answer cut as a tokenizer might: small pieces that join back to the text exactly."""
    pieces = _PIECES.findall(text)
    assert "".join(pieces) == text
    return pieces


class ScriptedEngine:
    """Wraps an engine: the script answers when it has an answer, the engine otherwise."""

    def __init__(self, engine: Engine, script: Script) -> None:
        self.engine = engine
        self.script = script
        self.hidden_size = engine.hidden_size
        self.max_model_len = engine.max_model_len

    def __getattr__(self, name: str) -> Any:  # prompt parsing and checks: the wrapped engine's own
        return getattr(self.engine, name)

    def generate(self, prompt: Prompt, params: SamplingParams) -> Iterator[Step]:
        answer = self.script.take()
        if answer is None:
            yield from self.engine.generate(prompt, params)
            return
        pieces = pieces_of(answer)
        assembler = TextAssembler(lambda ids: "".join(pieces[i] for i in ids), params.stop)
        count = min(len(pieces), params.max_tokens)
        for i in range(count):
            infos = []
            if params.logprobs is not None:
                infos.append(TokenLogprob(pieces[i], 0.0, {pieces[i]: 0.0}, len(assembler.text)))
            piece = assembler.add(i)
            if assembler.stop_reason is not None:
                yield Step(piece, infos, "stop", assembler.stop_reason)
                return
            if i == count - 1:
                reason = "length" if count < len(pieces) else "stop"
                yield Step(piece + assembler.flush(), infos, reason)
                return
            yield Step(piece, infos)
        if count == 0:
            yield Step("", [], "stop")
