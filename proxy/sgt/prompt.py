"""Render prompts into token ids plus the mask of tokens the SGT obfuscates.

The chat template comes from the SGT file. Rendering happens in the proxy;
only the obfuscated embeddings of the result ever leave it. By default the
message contents are obfuscated and the template's own tokens (role markers,
special tokens) are not, which keeps the model oriented in the conversation.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template


class TemplateRefusedError(ValueError):
    """The chat template rejected the messages (``raise_exception``, say, for roles out of order)."""


@dataclass(frozen=True)
class RenderedPrompt:
    """Token ids of one prompt and which of them carry user content."""

    ids: torch.Tensor  # [seq] int64
    mask: torch.Tensor  # [seq] bool, True = obfuscate

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class PromptRenderer:
    """Chat template + tokenizer, safe to share between threads.

    Encoding goes through the Rust ``tokenizers.Tokenizer`` directly: the
    transformers wrapper mutates truncation state on every call, which is not
    thread-safe. The chat template is transformers' own compiled Jinja
    template (its sandbox, filters and globals), rendered directly with the
    variables ``apply_chat_template`` passes: that call's argument checks and
    conversions of rich message objects cost a quarter of a millisecond per
    request, for messages that are plain role/content strings here
    (tests/test_sgt.py checks the two render the same).
    """

    def __init__(self, tokenizer_json: str, chat_template: str, special_tokens: dict[str, str]) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        wrapper = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **special_tokens)
        self._template = _compile_jinja_template(chat_template)
        self._template_vars = {**wrapper.special_tokens_map, "tools": None, "documents": None}
        self.special_ids = frozenset(
            token_id for token_id, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        )

    def render_chat(self, messages: Sequence[dict]) -> RenderedPrompt:
        """Apply the chat template (with the generation prompt) and mask message contents.

        Everything inside a content is obfuscated, control tokens too: a message
        never legitimately holds one, and one typed there (``<|im_end|>``) would
        otherwise reach the upstream as its plain embedding, and act on the model.
        """
        try:
            text = self._template.render(messages=list(messages), add_generation_prompt=True, **self._template_vars)
        except jinja2.TemplateError as exc:
            raise TemplateRefusedError(f"the model's chat template refused these messages: {exc}") from None
        spans = _content_spans(text, [m.get("content") or "" for m in messages])
        return self._encode(text, spans, add_special_tokens=False, kept=frozenset())

    def render_text(self, prompt: str) -> RenderedPrompt:
        """A raw completion prompt: every non-special token is content.

        Special tokens stay plain here: a raw prompt may spell out a template on purpose.
        """
        return self._encode(prompt, [(0, len(prompt))], add_special_tokens=True, kept=self.special_ids)

    def render_content(self, content: str) -> RenderedPrompt:
        """One message content alone, for an upstream that applies the chat template itself.

        No special tokens are added and every token is obfuscated (special tokens
        written in the content too): the template's own tokens are the upstream's.
        """
        return self._encode(content, [(0, len(content))], add_special_tokens=False, kept=frozenset())

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def _encode(
        self, text: str, spans: list[tuple[int, int]], add_special_tokens: bool, kept: frozenset[int]
    ) -> RenderedPrompt:
        """Token ids and the mask: tokens overlapping ``spans``, except the ids in ``kept``."""
        enc = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        ids = enc.ids
        mask = _content_mask(ids, enc.offsets, spans, kept)
        # tensors over buffers: a tenth of the time of torch.tensor(list), which inspects every element
        return RenderedPrompt(
            torch.frombuffer(array("q", ids), dtype=torch.int64) if ids else torch.zeros(0, dtype=torch.long),
            torch.frombuffer(mask, dtype=torch.bool) if ids else torch.zeros(0, dtype=torch.bool),
        )


def _content_spans(text: str, contents: list[str]) -> list[tuple[int, int]]:
    """Character spans of each message content inside the rendered text, in order.

    A template that rewrites a content (strips it, say) falls back to its
    stripped form; a content that cannot be found makes the whole text count
    as content, so a surprising template never leaves user text unmasked.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for content in contents:
        needle = content if content in text[cursor:] else content.strip()
        if not needle:
            continue
        start = text.find(needle, cursor)
        if start < 0:
            return [(0, len(text))]
        spans.append((start, start + len(needle)))
        cursor = start + len(needle)
    return spans


def _content_mask(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], kept: frozenset[int]
) -> bytearray:
    """1 for each token that overlaps a content span and whose id is not in ``kept``.

    One pass over tokens and spans together (both sorted by start, spans
    disjoint). Offsets that go backwards (no tokenizer known here does that)
    fall back to checking every span, so no content is ever left unmasked.
    """
    mask = bytearray(len(ids))
    j = 0
    last_start = 0
    for i, (start, end) in enumerate(offsets):
        if start < last_start:
            return bytearray(
                token_id not in kept and any(start < e and end > s for s, e in spans)
                for token_id, (start, end) in zip(ids, offsets, strict=True)
            )
        last_start = start
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j < len(spans) and end > spans[j][0] and ids[i] not in kept:
            mask[i] = 1
    return mask
