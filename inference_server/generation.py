"""Engines: the real token-by-token loop on a transformers model, and a null engine.

Both take a ``Prompt`` (embeddings or token ids) and yield one ``Step`` per
generated token, so the HTTP layer treats them alike. Plain prompts are
embedded with the model's own input embeddings, so text and ``prompt_embeds``
share one loop and give the same greedy text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from inference_server.detokenize import TextAssembler
from inference_server.embeds import decode_prompt_embeds
from inference_server.errors import ApiError
from inference_server.sampling import SamplingParams, make_generator, sample_next

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_LOGPROB = -9999.0  # vLLM's floor: keeps -inf out of the JSON


@dataclass
class Prompt:
    """One prompt of a request: decoded ``prompt_embeds`` or token ids."""

    embeds: torch.Tensor | None = None
    token_ids: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt length in tokens (rows of the embedding matrix)."""
        return int(self.embeds.shape[0]) if self.embeds is not None else len(self.token_ids or [])


@dataclass
class TokenLogprob:
    """Logprob info for one generated token (vLLM completion format pieces)."""

    token: str
    logprob: float
    top: dict[str, float]
    text_offset: int


@dataclass
class Step:
    """One generated token: the text piece now safe to emit, and why it ended, if it did."""

    piece: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class Engine(Protocol):
    """What the HTTP layer needs from a model."""

    hidden_size: int
    max_model_len: int

    def encode_prompt(self, text: str) -> list[int]:
        """Tokenize a plain-text prompt."""
        ...

    def decode_embeds(self, data: object) -> torch.Tensor:
        """Decode and validate one base64 ``prompt_embeds`` payload."""
        ...

    def check_token_ids(self, ids: Sequence[int]) -> None:
        """Raise ``ApiError`` for token ids outside the vocabulary."""
        ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to messages (with the generation prompt), as text."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a piece of rendered chat text, adding no special tokens (vLLM's chat default)."""
        ...

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Input embedding rows ``[len(ids), hidden_size]`` in the model dtype, to splice with prompt_embeds."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams) -> Iterator[Step]:
        """Yield one ``Step`` per generated token; the last one has a finish_reason."""
        ...


class ModelEngine:
    """A transformers causal LM with a KV-cached sampling loop.

    One lock serialises forward passes (a 2-core machine gains nothing from
    running two at once), taken per step so concurrent requests interleave.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_model_len: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.hidden_size = int(config.hidden_size)
        limit = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        if max_model_len is not None and limit is not None and max_model_len > limit:
            raise ValueError(f"--max-model-len {max_model_len} exceeds the model's max_position_embeddings {limit}")
        self.max_model_len = int(max_model_len or limit or 2048)
        self.dtype = next(model.parameters()).dtype
        self.embedding = model.get_input_embeddings()
        self.vocab_size = int(self.embedding.weight.shape[0])
        self.eos_ids = _eos_ids(model, tokenizer)
        self._model_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not thread-safe
        self._token_strings: dict[int, str] = {}

    # prompts -----------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        """Tokenize like vLLM (special tokens per the tokenizer's post-processor)."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode_embeds(self, data: object) -> torch.Tensor:
        """Decode one ``prompt_embeds`` entry and cast it to the model dtype."""
        return decode_prompt_embeds(data, self.hidden_size, self.dtype)

    def check_token_ids(self, ids: Sequence[int]) -> None:
        """Reject ids the embedding table does not have."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ApiError(f"token id {bad[0]} is out of vocabulary (size {self.vocab_size})", param="prompt")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's own chat template, as vLLM applies it."""
        with self._tokenizer_lock:
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except ValueError as exc:  # no template, or one that rejects these messages
                raise ApiError(f"the chat template cannot render these messages: {exc}", param="messages") from None

    def encode_text(self, text: str) -> list[int]:
        """Tokenize without special tokens: the template wrote them as text."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """The model's own input embeddings, the rows ``generate`` uses for token-id prompts."""
        with torch.inference_mode():
            return self.embedding(torch.tensor(list(ids), dtype=torch.long)).to(self.dtype)

    # text --------------------------------------------------------------------
    def _decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _token_string(self, token_id: int) -> str:
        text = self._token_strings.get(token_id)
        if text is None:
            with self._tokenizer_lock:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_strings[token_id] = text
        return text

    def _logprobs(self, logits: torch.Tensor, token: int, k: int, offset: int) -> TokenLogprob:
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = max(float(logprobs[token]), MIN_LOGPROB)
        top = {self._token_string(token): chosen}
        if k > 0:
            values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
            for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
                top.setdefault(self._token_string(tid), max(value, MIN_LOGPROB))
        return TokenLogprob(self._token_string(token), chosen, top, offset)

    # the loop ------------------------------------------------------------------
    def generate(self, prompt: Prompt, params: SamplingParams) -> Iterator[Step]:
        """Sample up to ``params.max_tokens`` tokens with a KV cache, one Step each."""
        generator = make_generator(params.seed)
        assembler = TextAssembler(self._decode, params.stop)
        counts = torch.zeros(self.vocab_size, dtype=torch.float32)
        with torch.inference_mode():
            if prompt.embeds is not None:
                inputs = prompt.embeds.to(self.dtype).unsqueeze(0)
            else:
                inputs = self.embedding(torch.tensor([prompt.token_ids], dtype=torch.long))
        cache = None
        for i in range(params.max_tokens):
            with self._model_lock, torch.inference_mode():
                out = self.model(inputs_embeds=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            logits = out.logits[0, -1].float()
            if logits.shape[-1] > self.vocab_size:
                logits = logits[: self.vocab_size]
            token = sample_next(logits, counts, params, generator)
            counts[token] += 1
            infos = []
            if params.logprobs is not None:
                infos.append(self._logprobs(logits, token, params.logprobs, len(assembler.text)))
            if token in self.eos_ids and not params.ignore_eos:
                yield Step(assembler.flush(), infos, "stop")
                return
            piece = assembler.add(token)
            if assembler.stop_reason is not None:
                yield Step(piece, infos, "stop", assembler.stop_reason)
                return
            if i == params.max_tokens - 1:
                yield Step(piece + assembler.flush(), infos, "length")
                return
            yield Step(piece, infos)
            with torch.inference_mode():
                inputs = self.embedding(torch.tensor([[token]], dtype=torch.long))


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """All ids that end a completion: generation_config's and the tokenizer's eos."""
    ids: set[int] = set()
    gen_config = getattr(model, "generation_config", None)
    for source in (getattr(gen_config, "eos_token_id", None), model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


def load_model_engine(model_dir: str | Path, dtype: str = "float32", max_model_len: int | None = None) -> ModelEngine:
    """Load a plain HF directory (no network) into a ``ModelEngine``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
    return ModelEngine(model, tokenizer, max_model_len)


class NullEngine:
    """Benchmark mode: validates prompts exactly like the model engine, then answers
    ``n_tokens`` fixed tokens at once, so the proxy's own cost can be measured.
    Plain-text prompts count one token per UTF-8 byte (there is no tokenizer).
    """

    def __init__(
        self,
        hidden_size: int,
        n_tokens: int,
        max_model_len: int = 8192,
        dtype: str = "float32",
        token: str = " tok",
        token_delay: float = 0.0,
    ) -> None:
        self.hidden_size = hidden_size
        self.token_delay = token_delay  # seconds before each token: a slow upstream for fault tests
        self.n_tokens = n_tokens
        self.max_model_len = max_model_len
        self.dtype = DTYPES[dtype]
        self.token = token

    def encode_prompt(self, text: str) -> list[int]:
        """One id per UTF-8 byte."""
        return list(text.encode("utf-8"))

    def decode_embeds(self, data: object) -> torch.Tensor:
        """Same checks (and cast) as the model engine."""
        return decode_prompt_embeds(data, self.hidden_size, self.dtype)

    def check_token_ids(self, ids: Sequence[int]) -> None:
        """Any non-negative id is fine: there is no vocabulary."""
        if any(i < 0 for i in ids):
            raise ApiError("token ids must be non-negative", param="prompt")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """No template here: ``role: content`` lines, enough to count and splice."""
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages)

    def encode_text(self, text: str) -> list[int]:
        """One id per UTF-8 byte, as for prompts."""
        return list(text.encode("utf-8"))

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Zeros: the null engine never reads its prompt."""
        return torch.zeros(len(ids), self.hidden_size, dtype=self.dtype)

    def generate(self, prompt: Prompt, params: SamplingParams) -> Iterator[Step]:
        """Yield min(n_tokens, max_tokens) copies of the fixed token."""
        assembler = TextAssembler(lambda ids: self.token * len(ids), params.stop)
        count = min(self.n_tokens, params.max_tokens)
        for i in range(count):
            if self.token_delay:
                time.sleep(self.token_delay)
            infos = []
            if params.logprobs is not None:
                infos.append(TokenLogprob(self.token, 0.0, {self.token: 0.0}, len(assembler.text)))
            piece = assembler.add(0)
            if assembler.stop_reason is not None:
                yield Step(piece, infos, "stop", assembler.stop_reason)
                return
            if i == count - 1:
                reason = "length" if count == params.max_tokens else "stop"
                yield Step(piece + assembler.flush(), infos, reason)
                return
            yield Step(piece, infos)
        if count == 0:  # n_tokens == 0: an empty answer
            yield Step("", [], "stop")
