"""vLLM's completions and chat protocols: parse/validate a request, build responses and chunks.

Why hand-written and strict: the proxy's tests pin these shapes, and a wrong
field must give the same 400 the real vLLM would, not a silent default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_server.chat import chat_prompt
from inference_server.errors import ApiError
from inference_server.generation import Engine, Prompt, TokenLogprob
from inference_server.sampling import SamplingParams

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_N = 128


@dataclass
class CompletionRequest:
    """A validated ``/v1/completions`` request."""

    model: str
    prompts: list[Prompt]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    chat: bool = False  # a /v1/chat/completions request: answered in the chat shape

    def choice_params(self, index_in_prompt: int) -> SamplingParams:
        """Choice i of a prompt samples with seed + i (so n choices differ yet reproduce)."""
        seed = self.params.seed
        return dataclasses.replace(self.params, seed=None if seed is None else seed + index_in_prompt)


def _number(
    body: dict[str, Any],
    name: str,
    default: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{name} must be a number", param=name)
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ApiError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}", param=name)
    if high is not None and value > high:
        raise ApiError(f"{name} must be <= {high}, got {value}", param=name)
    return value


def _integer(
    body: dict[str, Any], name: str, default: int | None, low: int | None = None, high: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer", param=name)
    if low is not None and value < low:
        raise ApiError(f"{name} must be at least {low}, got {value}", param=name)
    if high is not None and value > high:
        raise ApiError(f"{name} must be at most {high}, got {value}", param=name)
    return value


def _stop_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise ApiError("stop must be a string or a list of strings", param="stop")


def _is_int_list(value: object) -> bool:
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _parse_prompts(body: dict[str, Any], engine: Engine) -> list[Prompt]:
    prompts: list[Prompt] = []
    embeds = body.get("prompt_embeds")
    if embeds is not None:
        items = embeds if isinstance(embeds, list) else [embeds]
        if not items:
            raise ApiError("prompt_embeds must not be an empty list", param="prompt_embeds")
        prompts.extend(Prompt(embeds=engine.decode_embeds(item)) for item in items)
    text = body.get("prompt")
    if text is not None and text != []:
        if isinstance(text, str):
            id_lists = [engine.encode_prompt(text)]
        elif _is_int_list(text):
            id_lists = [list(text)]
        elif isinstance(text, list) and all(isinstance(p, str) for p in text):
            id_lists = [engine.encode_prompt(p) for p in text]
        elif isinstance(text, list) and all(_is_int_list(p) for p in text):
            id_lists = [list(p) for p in text]
        else:
            raise ApiError("prompt must be a string, a list of strings, or token ids", param="prompt")
        for ids in id_lists:
            if not ids:
                raise ApiError("prompt must not be empty", param="prompt")
            engine.check_token_ids(ids)
            prompts.append(Prompt(token_ids=ids))
    if not prompts:
        raise ApiError("Either prompt or prompt_embeds must be provided and non-empty.")
    return prompts


def parse_completion_request(body: object, engine: Engine, served_model_name: str) -> CompletionRequest:
    """Validate a JSON body like vLLM's ``CompletionRequest``; raise ``ApiError`` if bad."""
    body = _checked_body(body, served_model_name)
    if isinstance(body.get("logprobs"), bool):
        raise ApiError("logprobs must be an integer for completions", param="logprobs")
    logprobs = _integer(body, "logprobs", None, low=0, high=MAX_LOGPROBS)
    max_tokens = _integer(body, "max_tokens", None, low=1) if "max_tokens" in body else 16
    return _request(
        body, served_model_name, engine.max_model_len, logprobs, max_tokens, lambda: _parse_prompts(body, engine)
    )


def parse_chat_request(body: object, engine: Engine, served_model_name: str) -> CompletionRequest:
    """Validate a JSON body like vLLM's ``ChatCompletionRequest`` (text and prompt_embeds parts)."""
    body = _checked_body(body, served_model_name)
    flag = body.get("logprobs")
    if flag is not None and not isinstance(flag, bool):
        raise ApiError("logprobs must be a boolean for chat completions", param="logprobs")
    top = _integer(body, "top_logprobs", None, low=0, high=MAX_LOGPROBS)
    logprobs = (top or 0) if flag else None
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, None, low=1)  # none: what the context leaves (vLLM)
    request = _request(
        body,
        served_model_name,
        engine.max_model_len,
        logprobs,
        max_tokens,
        lambda: [chat_prompt(body.get("messages"), engine)],
    )
    request.chat = True
    return request


def _checked_body(body: object, served_model_name: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model_name:
        raise ApiError(f"The model `{model}` does not exist.", status=404, param="model")
    return body


def _request(
    body: dict[str, Any],
    served_model_name: str,
    max_model_len: int,
    logprobs: int | None,
    max_tokens: int | None,
    parse_prompts: Callable[[], list[Prompt]],
) -> CompletionRequest:
    """The fields both endpoints share; the prompts are parsed after the sampling fields are checked."""
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise ApiError("Stream options can only be defined when `stream=True`.", param="stream_options")
        if not isinstance(options, dict):
            raise ApiError("stream_options must be an object", param="stream_options")
    include_usage = bool((options or {}).get("include_usage", False))

    seed = _integer(body, "seed", None)
    top_k = _integer(body, "top_k", 0, low=-1)
    params = SamplingParams(
        max_tokens=0,
        temperature=_number(body, "temperature", 1.0, low=0.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        top_k=max(int(top_k or 0), 0),
        presence_penalty=_number(body, "presence_penalty", 0.0, low=-2.0, high=2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, low=-2.0, high=2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, low=0.0, low_open=True),
        seed=seed,
        stop=_stop_list(body.get("stop")),
        logprobs=logprobs,
        ignore_eos=bool(body.get("ignore_eos", False)),
    )
    n = int(_integer(body, "n", 1, low=1, high=MAX_N) or 1)

    prompts = parse_prompts()
    longest = max(p.num_tokens for p in prompts)
    if max_tokens is None:  # explicit null: whatever room the context leaves (vLLM)
        max_tokens = max_model_len - longest
    if longest + max_tokens > max_model_len or max_tokens < 1:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{longest + max_tokens} tokens ({longest} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens" if longest < max_model_len else "prompt",
        )
    params.max_tokens = max_tokens
    return CompletionRequest(served_model_name, prompts, params, n, stream, include_usage)


def logprobs_payload(infos: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """vLLM's completion logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    if infos is None:
        return None
    return {
        "tokens": [i.token for i in infos],
        "token_logprobs": [i.logprob for i in infos],
        "top_logprobs": [i.top for i in infos],
        "text_offset": [i.text_offset for i in infos],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage block (prompt tokens counted once per prompt, not per choice)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(
    index: int,
    text: str,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    """One choice of a whole response or of a streamed chunk."""
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }


def completion_object(
    response_id: str, created: int, model: str, choices: list[dict[str, Any]], usage_block: dict[str, int] | None
) -> dict[str, Any]:
    """A whole response or one chunk (``object`` is ``text_completion`` for both, as in vLLM)."""
    out: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_block is not None:
        out["usage"] = usage_block
    return out


class CompletionShape:
    """How /v1/completions answers look: ``text_completion`` objects, ``choices[i].text``."""

    id_prefix = "cmpl"

    def choice(
        self,
        index: int,
        text: str,
        infos: list[TokenLogprob] | None,
        finish_reason: str | None,
        stop_reason: str | int | None,
    ) -> dict[str, Any]:
        return completion_choice(index, text, logprobs_payload(infos), finish_reason, stop_reason)

    def role_choice(self, index: int) -> dict[str, Any] | None:
        """A streamed choice's opening chunk: none for completions."""
        return None

    def envelope(
        self,
        response_id: str,
        created: int,
        model: str,
        choices: list[dict[str, Any]],
        usage_block: dict[str, int] | None,
    ) -> dict[str, Any]:
        return completion_object(response_id, created, model, choices, usage_block)


class ChatShape(CompletionShape):
    """How /v1/chat/completions answers look: ``message`` (whole) or ``delta`` (streamed), role chunk first."""

    id_prefix = "chatcmpl"

    def __init__(self, streamed: bool) -> None:
        self.streamed = streamed

    def choice(
        self,
        index: int,
        text: str,
        infos: list[TokenLogprob] | None,
        finish_reason: str | None,
        stop_reason: str | int | None,
    ) -> dict[str, Any]:
        key, value = (
            ("delta", {"content": text}) if self.streamed else ("message", {"role": "assistant", "content": text})
        )
        return {
            "index": index,
            key: value,
            "logprobs": chat_logprobs_payload(infos),
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,
        }

    def role_choice(self, index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}

    def envelope(
        self,
        response_id: str,
        created: int,
        model: str,
        choices: list[dict[str, Any]],
        usage_block: dict[str, int] | None,
    ) -> dict[str, Any]:
        out = completion_object(response_id, created, model, choices, usage_block)
        out["object"] = "chat.completion.chunk" if self.streamed else "chat.completion"
        if not self.streamed:
            out.setdefault("usage", None)
        return out


def response_shape(req: CompletionRequest) -> CompletionShape:
    """The shape of a request's answer: the generation loop is the same for both endpoints."""
    return ChatShape(req.stream) if req.chat else CompletionShape()


def chat_logprobs_payload(infos: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """vLLM's chat logprobs: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if infos is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(i.token, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top.items()]} for i in infos
        ]
    }
