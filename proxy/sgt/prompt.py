"""Render prompts into token ids plus the mask of tokens the SGT obfuscates.

The chat template comes from the SGT file. Rendering happens in the proxy;
only the obfuscated embeddings of the result ever leave it. By default the
message contents are obfuscated and the template's own tokens (role markers,
special tokens) are not, which keeps the model oriented in the conversation.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

    def render_chat(self, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> RenderedPrompt:
        """Apply the chat template (with the generation prompt) and mask every client string in it.

        Every string leaf of ``messages`` (contents, ``name``, and whatever else
        a message holds, nested: tool calls' arguments, say) and of ``tools``
        (passed to the template as ``tools`` when given) is client text, except
        the values of :data:`STRUCTURAL_KEYS`. Where the template renders such
        a string, each of its tokens is obfuscated, control tokens too: a
        message never legitimately holds one, and one typed there
        (``<|im_end|>``) would otherwise reach the upstream as its plain
        embedding, and act on the model. The template's own text is not,
        even where a client string repeats it: strings are located exactly
        (see :func:`locate_client_text`), never searched for.
        """
        variables = dict(self._template_vars, add_generation_prompt=True)
        if tools is not None:
            variables["tools"] = tools
        try:
            text = self._template.render(messages=list(messages), **variables)
        except jinja2.TemplateError as exc:
            raise TemplateRefusedError(f"the model's chat template refused these messages: {exc}") from None
        spans = locate_client_text(self._template, text, messages, tools, variables)
        if spans is None:  # not located exactly: all of it counts as client text
            spans = [(0, len(text))]
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

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone (no special tokens added): generated text counted again."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

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


STRUCTURAL_KEYS = frozenset({"role", "type"})
"""Keys whose string values are the API's vocabulary, not client text: templates compare them
(``message.role == 'user'``, ``tool.type == 'function'``), so a marked value would change the
rendering (and, caught by the check, obfuscate the whole prompt)."""

# Pairs of private-use code points (open, close): the first pair absent from the rendered text marks the
# client strings. Input that holds all of them only makes the whole prompt count as client text.
_MARKS = tuple((chr(0xE000 + 2 * k), chr(0xE001 + 2 * k)) for k in range(64))


def mark_client_strings(value: Any, wrap: Callable[[str], str], skip: frozenset[str] = STRUCTURAL_KEYS) -> Any:
    """A copy of ``value`` (messages, tools: JSON-like data) with ``wrap`` applied to every string leaf.

    Dict keys, non-string leaves and the string values of the keys in ``skip`` stay as they are,
    except in a tool's ``parameters`` (:func:`_mark_schema`) and a call's ``arguments``
    (:func:`_mark_data`), where keys are the client's words too.
    """
    if isinstance(value, str):
        return wrap(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == "parameters" and isinstance(v, Mapping):  # a tool's JSON Schema
                out[k] = _mark_schema(v, wrap)
            elif k == "arguments" and isinstance(v, Mapping):  # a tool call's arguments
                out[k] = _mark_data(v, wrap)
            else:
                out[k] = v if k in skip and isinstance(v, str) else mark_client_strings(v, wrap, skip)
        return out
    if isinstance(value, (list, tuple)):
        return [mark_client_strings(v, wrap, skip) for v in value]
    return value


# JSON Schema's own vocabulary: the keys of a tool's ``parameters`` that are not the client's words
# (templates read some of them: ``tool.parameters.properties``). Every other key there is client text.
SCHEMA_KEYWORDS = frozenset(
    "type properties required description title items prefixItems enum const default examples format pattern "
    "minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength maxLength minItems maxItems "
    "uniqueItems minProperties maxProperties additionalProperties additionalItems unevaluatedProperties "
    "unevaluatedItems patternProperties propertyNames contains minContains maxContains anyOf oneOf allOf not "
    "if then else $ref $defs definitions $schema $id $comment $anchor dependentRequired dependentSchemas "
    "dependencies contentEncoding contentMediaType readOnly writeOnly deprecated nullable strict".split()
)
# Schema keys whose own keys are names the client chose (property names, definition names).
_SCHEMA_NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentRequired", "dependentSchemas"}
)


def _mark_schema(value: Any, wrap: Callable[[str], str]) -> Any:
    """A tool's parameter schema marked: property names, strings and non-keyword keys are client text.

    A ``type`` value (``"string"``) stays: templates compare it, and it is the schema's vocabulary.
    """
    if isinstance(value, str):
        return wrap(value)
    if isinstance(value, (list, tuple)):
        return [_mark_schema(v, wrap) for v in value]
    if not isinstance(value, Mapping):
        return value
    out: dict[Any, Any] = {}
    for k, v in value.items():
        if k in _SCHEMA_NAME_MAPS and isinstance(v, Mapping):
            out[k] = {wrap(name) if isinstance(name, str) else name: _mark_schema(sub, wrap) for name, sub in v.items()}
        elif k == "type" and isinstance(v, str):
            out[k] = v
        elif k in SCHEMA_KEYWORDS:
            out[k] = _mark_schema(v, wrap)
        else:
            out[wrap(k) if isinstance(k, str) else k] = _mark_data(v, wrap)
    return out


def _mark_data(value: Any, wrap: Callable[[str], str]) -> Any:
    """Free-form client data (a call's arguments): every key and every string in it is client text."""
    if isinstance(value, str):
        return wrap(value)
    if isinstance(value, Mapping):
        return {wrap(k) if isinstance(k, str) else k: _mark_data(v, wrap) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark_data(v, wrap) for v in value]
    return value


def locate_client_text(
    template: jinja2.Template,
    text: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Any,
    variables: Mapping[str, Any],
) -> list[tuple[int, int]] | None:
    """Character spans of ``text`` (the plain render) that come from client strings; None if not located.

    The template is rendered again with each client string wrapped in two
    private-use marker characters that occur nowhere in ``text``. Stripping
    the markers must give ``text`` back exactly (a template that branches on,
    cuts or escapes a string fails this), and the markers must pair up; the
    characters between each pair are client text. Linear in the prompt's size:
    two renders and one split, whatever the number of messages.

    A string with outer whitespace is wrapped whole first; a template that
    trims it (``| trim``) then renders differently, so a second try wraps only
    its core (the whitespace outside the markers, where trimming removes it).
    """
    for open_mark, close_mark in _MARKS:
        if open_mark not in text and close_mark not in text:
            break
    else:
        return None

    def whole(value: str) -> str:
        return open_mark + value + close_mark if value else value

    def core(value: str) -> str:
        inner = value.strip()
        if not inner or len(inner) == len(value):
            return whole(value)
        lead = len(value) - len(value.lstrip())
        return value[:lead] + open_mark + inner + close_mark + value[lead + len(inner) :]

    for wrap in (whole, core):
        marked_messages = mark_client_strings(list(messages), wrap)
        marked_vars = dict(variables)
        if tools is not None:
            marked_vars["tools"] = mark_client_strings(tools, wrap)
        try:
            marked = template.render(messages=marked_messages, **marked_vars)
        except jinja2.TemplateError:
            return None
        found = _strip_marks(marked, open_mark, close_mark)
        if found is not None and found[0] == text:
            return found[1]
    return None


def _strip_marks(marked: str, open_mark: str, close_mark: str) -> tuple[str, list[tuple[int, int]]] | None:
    """The text without markers and the spans between marker pairs; None if the markers do not pair up."""
    parts = marked.split(open_mark)
    if close_mark in parts[0]:
        return None
    out = [parts[0]]
    spans: list[tuple[int, int]] = []
    pos = len(parts[0])
    for part in parts[1:]:
        inner, found, rest = part.partition(close_mark)
        if not found or close_mark in rest:
            return None
        if inner:
            spans.append((pos, pos + len(inner)))
        pos += len(inner) + len(rest)
        out.append(inner)
        out.append(rest)
    return "".join(out), spans


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
