"""What training and evaluation share: data, rendering, batching, greedy decoding.

Offline tooling only (``python -m sgt_tools train|eval``); never on the request
path. Texts come from the files in ``sgt_tools/data/`` (a small hand-written
corpus of chat turns and a factual question-answer set), or from the model
itself (its greedy answers to the corpus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxy.sgt.prompt import PromptRenderer, RenderedPrompt
from sgt_tools.build import tokenizer_content

DATA = Path(__file__).parent / "data"


def corpus_lines(path: str | Path | None = None) -> list[str]:
    """The training corpus: one user turn a line."""
    text = Path(path or DATA / "corpus.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def qa_items(path: str | Path | None = None) -> list[dict]:
    """The question-answer set: ``{"question": str, "answers": [str, ...]}`` a line."""
    lines = Path(path or DATA / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def is_correct(answer: str, expected: Sequence[str]) -> bool:
    """An expected string appears at a word start (whole word when it is one or two characters)."""
    for want in expected:
        tail = r"(?![A-Za-z0-9])" if len(want) <= 2 else ""
        if re.search(r"(?<![A-Za-z0-9])" + re.escape(want) + tail, answer, flags=re.IGNORECASE):
            return True
    return False


def renderer_for(tokenizer: PreTrainedTokenizerBase) -> PromptRenderer:
    """The proxy's own renderer for a HF tokenizer, so that training masks exactly what serving masks."""
    return PromptRenderer(**tokenizer_content(tokenizer))


@dataclass(frozen=True)
class Example:
    """One training or evaluation sequence: token ids, obfuscation mask, first position scored."""

    ids: torch.Tensor
    mask: torch.Tensor
    score_from: int


def chat_examples(
    renderer: PromptRenderer, texts: Sequence[str], responses: Sequence[list[int]] | None = None
) -> list[Example]:
    """User turns rendered with the chat template; an optional clean continuation (the reply) appended."""
    out = []
    for i, text in enumerate(texts):
        prompt = renderer.render_chat([{"role": "user", "content": text}])
        ids, mask = prompt.ids, prompt.mask
        if responses is not None and responses[i]:
            extra = torch.tensor(responses[i], dtype=torch.long)
            ids = torch.cat([ids, extra])
            mask = torch.cat([mask, torch.zeros(len(extra), dtype=torch.bool)])
        first = int(mask.nonzero()[0, 0]) if mask.any() else 0
        out.append(Example(ids, mask, first))
    return out


def random_examples(
    renderer: PromptRenderer,
    vocab_size: int,
    count: int,
    generator: torch.Generator,
    lengths: tuple[int, int] = (4, 24),
) -> list[Example]:
    """Chats whose user content is random tokens: covers the whole vocabulary, not only the corpus."""
    shell = renderer.render_chat([{"role": "user", "content": "x"}])
    where = shell.mask.nonzero()[:, 0]
    head, tail = shell.ids[: int(where[0])], shell.ids[int(where[-1]) + 1 :]
    allowed = _plain_ids(renderer, vocab_size)
    out = []
    for _ in range(count):
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=generator))
        body = allowed[torch.randint(len(allowed), (n,), generator=generator)]
        ids = torch.cat([head, body, tail])
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[len(head) : len(head) + n] = True
        out.append(Example(ids, mask, len(head)))
    return out


_PLAIN: dict[tuple[int, int], torch.Tensor] = {}


def _plain_ids(renderer: PromptRenderer, vocab_size: int) -> torch.Tensor:
    key = (id(renderer), vocab_size)
    if key not in _PLAIN:
        special = renderer.special_ids
        _PLAIN[key] = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    return _PLAIN[key]


@dataclass
class Batch:
    ids: torch.Tensor  # [B, S]
    mask: torch.Tensor  # [B, S] obfuscate
    attention: torch.Tensor  # [B, S]
    scored: torch.Tensor  # [B, S] positions whose next-token distribution counts

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.ids, self.mask, self.attention, self.scored)))


def collate(examples: Sequence[Example], pad_id: int = 0) -> Batch:
    """Right-padded batch (positions count from 0 in every row)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    scored = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n], mask[row, :n], attention[row, :n] = e.ids, e.mask, 1
        scored[row, e.score_from : n] = True
    return Batch(ids, mask, attention, scored)


@torch.no_grad()
def greedy(
    model: PreTrainedModel,
    embeds: Sequence[torch.Tensor],
    max_new_tokens: int,
    eos_ids: set[int],
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuations of prompts given as embedding rows ([seq, hidden] each), left-padded in batches."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[list[int]] = []
    for start in range(0, len(embeds), batch_size):
        chunk = embeds[start : start + batch_size]
        width = max(len(e) for e in chunk)
        x = torch.zeros((len(chunk), width, chunk[0].shape[1]), dtype=dtype, device=device)
        attention = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for row, e in enumerate(chunk):
            x[row, width - len(e) :] = e.to(device, dtype)
            attention[row, width - len(e) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        # logits of the last position only: the prompt's full [batch, seq, vocab] logits are never needed
        result = model(
            inputs_embeds=x, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        tokens: list[list[int]] = [[] for _ in chunk]
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            nxt = result.logits[:, -1].argmax(-1)
            for row, token in enumerate(nxt.tolist()):
                if not done[row]:
                    tokens[row].append(token)
            done |= torch.tensor([t in eos_ids for t in nxt.tolist()], device=device)
            if bool(done.all()):
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            result = model(
                input_ids=nxt[:, None],
                attention_mask=attention,
                position_ids=positions,
                past_key_values=result.past_key_values,
                use_cache=True,
            )
        out.extend([t for t in row_tokens if t not in eos_ids] for row_tokens in tokens)
    return out


def eos_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Tokens that end an answer: the EOS token and ChatML's end-of-turn marker."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return ids


def rendered_rows(table: torch.Tensor, prompt: RenderedPrompt) -> torch.Tensor:
    return table.index_select(0, prompt.ids.to(table.device))
