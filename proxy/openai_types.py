"""OpenAI request models, response models (for the docs) and the response shaper.

The upstream answers in the completions shape, or in the chat shape when chat
requests go to its /v1/chat/completions (``SGP_UPSTREAM_API=chat``).
``ResponseShaper`` turns each upstream event (the one body of a whole answer,
or one streamed chunk) into the shape the client asked for, so streamed and
whole answers share one path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from proxy import request_fields
from proxy.errors import BadRequestError
from proxy.parsers import OutputParser, merge_tool_calls
from proxy.stop import MAX_STOP_CHARS, StopSequences, cut_chat_logprobs, cut_logprobs

Role = Literal["system", "developer", "user", "assistant", "tool"]


class _Request(BaseModel):
    # strict: "0.5" is not a temperature; unknown fields are ignored as vLLM does, and OpenAI fields that would
    # change the answer are refused (proxy/request_fields.py, docs/request-fields.md).
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(_Request):
    """A function the model may call: its name, what it does and a JSON Schema of its arguments."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(_Request):
    """A call as the assistant made it; ``arguments`` is JSON text (as the model wrote it, maybe invalid)."""

    name: str
    arguments: str


class ToolCall(_Request):
    id: str = Field(min_length=1, max_length=512)
    type: Literal["function"]
    function: FunctionCall


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatMessage(_Request):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type")
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not supported; only 'text' parts are")
                TextPart.model_validate(part)
        return value

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        """As the OpenAI API: calls only from the assistant, a tool result names its call and has content."""
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        if self.role == "tool":
            if not self.tool_call_id:
                raise ValueError("a tool message needs tool_call_id: the id of the call it answers")
            if self.content is None:
                raise ValueError("a tool message needs content: the result of the call")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM does)."""
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content)
        return self.content or ""

    def template_message(self) -> dict[str, Any]:
        """The message as ``apply_chat_template`` takes it.

        A call's arguments go to the template decoded (a dict), as vLLM passes
        them: templates write them with ``tojson``. Arguments that are not a
        JSON object stay the string the client sent.
        """
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _decoded(c)}}
                for c in self.tool_calls
            ]
            if self.content is None:
                out["content"] = None
        if self.tool_call_id is not None and self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def _decoded(call: ToolCall) -> dict[str, Any] | str:
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments
    return arguments if isinstance(arguments, dict) else call.function.arguments


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them: role, content as one string, ``name`` when given, tool fields.

    Every string here but ``role`` (and a call's ``type``) is client text: the renderer obfuscates it
    wherever the template puts it.
    """
    return [m.template_message() for m in messages]


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields both endpoints share, passed upstream the way vLLM understands them."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)  # vLLM's extra field
    user: str | None = None  # accepted, never sent upstream: it names the end user (docs/request-fields.md)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in ([value] if isinstance(value, str) else value or ())):
            raise ValueError(f"a stop sequence is at most {MAX_STOP_CHARS} characters")
        return value

    def upstream_logprobs(self) -> int | None:
        raise NotImplementedError

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_payload(self) -> dict[str, Any]:
        """The sampling fields for vLLM's /v1/completions (None values left out).

        Neither ``stop`` (applied by the proxy: proxy/stop.py) nor ``user`` is among them: both are client text.
        """
        fields: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n": self.n,
            "seed": self.seed,
            # neutral penalties are not sent: vLLM's engine dies on any penalty with prompt_embeds (proxy/limits.py)
            "presence_penalty": self.presence_penalty or None,
            "frequency_penalty": self.frequency_penalty or None,
            "repetition_penalty": None if self.repetition_penalty == 1.0 else self.repetition_penalty,
            "logprobs": self.upstream_logprobs(),
            "stream": self.stream,
        }
        if self.stream:
            fields["stream_options"] = {
                "include_usage": bool(self.stream_options and self.stream_options.include_usage)
            }
        return {k: v for k, v in fields.items() if v is not None}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    _refused = model_validator(mode="before")(request_fields.refuse_chat)  # a 400, not ignored
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[FunctionTool] | None = Field(None, max_length=256)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools")
    @classmethod
    def _distinct_tools(cls, value: list[FunctionTool] | None) -> list[FunctionTool] | None:
        names = [t.function.name for t in value or ()]
        if len(set(names)) != len(names):
            raise ValueError("two tools have the same name")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, choice: str | NamedToolChoice | None, info: ValidationInfo) -> str | NamedToolChoice | None:
        """tool_choice needs tools; choices that need guided decoding upstream are refused (see README)."""
        tools = info.data.get("tools") or ()
        if choice is not None and choice != "none" and not tools:
            raise ValueError("tool_choice needs tools: give the functions the model may call")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools}:
            raise ValueError("tool_choice names a function that is not among the tools")
        if choice == "required" or isinstance(choice, NamedToolChoice):
            raise ValueError(GUIDED_TOOL_CHOICE)
        return choice

    @field_validator("response_format")
    @classmethod
    def _plain_text_only(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        if value is not None and value.type != "text":
            raise ValueError(GUIDED_RESPONSE_FORMAT)
        return value

    def tools_enabled(self) -> bool:
        """Whether the model is offered tools (and its answer is parsed for calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as ``apply_chat_template`` takes them (None: the template renders no tools section).

        With ``tool_choice: "none"`` the tools are still rendered, as vLLM does:
        the conversation may refer to them; only the answer is not parsed for calls.
        """
        if not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def uses_tools(self) -> bool:
        """Tools offered, or tool calls and results in the conversation."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)

    def upstream_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        return template_messages(self.messages)

    def chat_sampling_payload(self) -> dict[str, Any]:
        """The sampling fields for vLLM's /v1/chat/completions, where logprobs is a flag plus top_logprobs."""
        fields = self.sampling_payload()
        fields.pop("logprobs", None)
        if self.logprobs:
            fields["logprobs"] = True
            fields["top_logprobs"] = self.top_logprobs or 0
        return fields


GUIDED_TOOL_CHOICE = (
    'tool_choice "required" or a named function is not supported: forcing a call needs guided decoding '
    "on the inference server, which would send the tools' JSON schema there in plain text. "
    'Use "auto" (the default when tools are given) or "none".'
)
GUIDED_RESPONSE_FORMAT = (
    "response_format json_object and json_schema are not supported: structured output needs guided decoding "
    "on the inference server, which would send the schema there in plain text. Ask for JSON in the prompt "
    "instead (it is obfuscated), or leave response_format out."
)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    _refused = model_validator(mode="before")(request_fields.refuse_completion)  # a 400, not ignored
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("prompt must be a string or a list of 1 to 64 strings")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported: the prompt text never leaves the proxy")
        return value

    def upstream_logprobs(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---- response models: documentation of what the shaper builds ---------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class AnswerToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = Field(None, description="with SGP_REASONING_PARSER: the model's thinking")
    tool_calls: list[AnswerToolCall] | None = Field(None, description="with SGP_TOOL_PARSER: the calls it made")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None


class ToolCallFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(None, description="in a call's first delta only")
    type: Literal["function"] | None = Field(None, description="in a call's first delta only")
    function: ToolCallFunctionDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int | None = None
    owned_by: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


# ---- shaping ----------------------------------------------------------------------------------

UpstreamShape = Literal["completion", "chat"]  # the events an upstream route answers with (proxy/serving/route.py)
ParserFactory = Callable[[], OutputParser]  # a fresh parser for each choice of an answer


class ResponseShaper:
    """Turns upstream completions events into chat or completion answers, whole or streamed.

    With ``upstream="chat"`` (the route's shape) the upstream's events are already chat-shaped (role
    chunk, ``delta.content``, usage): only ``model`` is set to the client's.
    Output protection decrypts before the shaper (``serving``): it sees plain text or relays ciphertext.

    With ``parsers`` each choice's text (plain: decrypted first) goes through
    its own :class:`~proxy.parsers.OutputParser`, which moves reasoning to
    ``reasoning_content`` and tool calls to ``tool_calls``. ``single_call``
    keeps only a choice's first call (``parallel_tool_calls: false``).
    """

    def __init__(
        self,
        kind: Literal["chat", "completion"],
        model: str,
        streamed: bool,
        upstream: UpstreamShape = "completion",
        parsers: ParserFactory | None = None,
        single_call: bool = False,
        stops: StopSequences | None = None,
    ) -> None:
        upstream_chat = upstream == "chat"
        if upstream_chat and (kind != "chat" or parsers is not None):
            raise ValueError("a chat upstream's answer is relayed to chat requests only, unparsed")
        if parsers is not None and kind != "chat":
            raise ValueError("only chat answers are parsed for tool calls and reasoning")
        self.parsers = parsers
        self.single_call = single_call
        self._parser_of: dict[int, OutputParser] = {}
        self.kind = kind
        self.model = model
        self.streamed = streamed
        self.upstream_chat = upstream_chat
        self.stops = stops  # applied to the text after the piece filter (decryption)
        self._last_event: dict[str, Any] = {}
        self._started: set[int] = set()
        self._role_chunks = kind == "chat" and streamed  # a stream's first chunk per choice names the role
        if kind == "chat":
            self._object = "chat.completion.chunk" if streamed else "chat.completion"
        else:
            self._object = "text_completion"

    def shape_batch(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The client events for a batch of upstream events, in order."""
        return [shaped for event in events for shaped in self.shape(event)]

    def shape(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The client events for one upstream event (a role chunk may come first)."""
        if self.upstream_chat:
            if self.stops is not None:
                return self._stop_chat(event)
            return [{**event, "model": self.model}]
        out: list[dict[str, Any]] = []
        choices = []
        for choice in event.get("choices") or ():
            index = int(choice.get("index", 0))
            text = choice.get("text") or ""
            if self.stops is not None:
                if self.stops.stopped(index):
                    continue  # the rest of a choice that has stopped is not sent
                text, choice = self._stop(index, text, choice)
            if self._role_chunks and index not in self._started:
                self._started.add(index)
                role = {"index": index, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}
                out.append(self._envelope(event, [role], None))
            if self.parsers is None:
                choices.append(self._choice(index, text, choice))
            elif (parsed := self._parsed_choice(index, text, choice)) is not None:
                choices.append(parsed)
        usage = event.get("usage")
        keep_empty = self.stops is None and (self.parsers is None or not event.get("choices"))
        if choices or usage is not None or not self.streamed or keep_empty:
            out.append(self._envelope(event, choices, usage))
        self._last_event = event
        return out

    def _parsed_choice(self, index: int, text: str, choice: dict[str, Any]) -> dict[str, Any] | None:
        """One choice through its parser; None for a streamed piece that is all held back (nothing to send yet)."""
        parser = self._parser_of.get(index)
        if parser is None:
            parser = self._parser_of[index] = self.parsers()  # type: ignore[misc]
        finish_reason = choice.get("finish_reason")
        delta = parser.feed(text)
        if finish_reason is not None or not self.streamed:
            delta.add(parser.finish())
            if parser.called:
                finish_reason = "tool_calls"
        calls = [f for f in delta.tool_calls if f.index == 0] if self.single_call else delta.tool_calls
        logprobs = chat_logprobs(choice["logprobs"]) if choice.get("logprobs") else None
        reasoning = parser.reasoning is not None
        if self.streamed:
            if not (delta.content or delta.reasoning or calls) and finish_reason is None and logprobs is None:
                return None
            out: dict[str, Any] = {}
            if delta.content or not (delta.reasoning or calls):
                out["content"] = delta.content
            if delta.reasoning:
                out["reasoning_content"] = delta.reasoning
            if calls:
                out["tool_calls"] = [f.as_dict() for f in calls]
            return {"index": index, "delta": out, "logprobs": logprobs, "finish_reason": finish_reason}
        whole = merge_tool_calls(calls)
        message: dict[str, Any] = {"role": "assistant", "content": delta.content or (None if whole else "")}
        if reasoning:
            message["reasoning_content"] = delta.reasoning or None
        if whole:
            message["tool_calls"] = [c.as_dict() for c in whole]
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}

    def _stop(self, index: int, text: str, choice: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Stop sequences on one completion-shaped choice: the text to send, and the choice (finish_reason "stop",
        a whole answer's logprobs cut to the text kept, when a stop string was found)."""
        assert self.stops is not None
        text, stopped = self.stops.apply(index, text, choice.get("finish_reason") is not None or not self.streamed)
        if not stopped:
            return text, choice
        logprobs = choice.get("logprobs")
        return text, {**choice, "finish_reason": "stop", "logprobs": logprobs and cut_logprobs(logprobs, len(text))}

    def _stop_chat(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Stop sequences on a chat upstream's event (``delta.content`` streamed, ``message.content`` whole)."""
        assert self.stops is not None
        field = "delta" if self.streamed else "message"
        choices = []
        for choice in event.get("choices") or ():
            index = int(choice.get("index", 0))
            if self.stops.stopped(index):
                continue
            body = choice.get(field) or {}
            last = choice.get("finish_reason") is not None or not self.streamed
            text, stopped = self.stops.apply(index, body.get("content") or "", last)
            choice = {**choice, field: {**body, "content": text}}
            if stopped:
                logprobs = choice.get("logprobs")
                choice["finish_reason"] = "stop"
                choice["logprobs"] = logprobs and cut_chat_logprobs(logprobs, len(text))
            choices.append(choice)
        self._last_event = event
        if not choices and event.get("usage") is None and self.streamed:
            return []
        return [{**event, "model": self.model, "choices": choices}]

    def usage_event(self, usage: dict[str, Any]) -> dict[str, Any]:
        """A streamed answer's closing usage chunk, made here when the upstream was cut off before its own."""
        if self.upstream_chat:
            last = self._last_event
            return {
                "id": last.get("id"),
                "object": "chat.completion.chunk",
                "created": last.get("created"),
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
        return self._envelope(self._last_event, [], usage)

    def _choice(self, index: int, text: str, choice: dict[str, Any]) -> dict[str, Any]:
        """One choice in the client's shape (runs for every streamed event: kept flat)."""
        logprobs = choice.get("logprobs")
        finish_reason = choice.get("finish_reason")
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        logprobs = chat_logprobs(logprobs) if logprobs else None
        if self.streamed:  # no role in the delta: it is not a protected piece
            return {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish_reason}
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}

    def _envelope(
        self, event: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        created = event.get("created")
        body = {
            "id": event.get("id"),
            "object": self._object,
            "created": int(time.time()) if created is None else created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None or not self.streamed:
            body["usage"] = usage
        return body


def chat_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    """vLLM completion logprobs -> the chat ``{"content": [...]}`` shape."""
    if not logprobs:
        return None
    content = []
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs.get("tokens", []))
    for token, logprob, top in zip(logprobs.get("tokens", []), logprobs.get("token_logprobs", []), tops, strict=False):
        content.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in (top or {}).items()
                ],
            }
        )
    return {"content": content, "refusal": None}


def request_error(exc: Exception) -> BadRequestError:
    """A pydantic ValidationError as a 400 naming the first bad field."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        msg = first.get("msg", "invalid request")
        return BadRequestError(f"{param}: {msg}" if param else msg, param=param, code="invalid_value")
    return BadRequestError(str(exc))


# ---- /v1/stainedglass: what the transform does to a prompt, without calling the model ----------


class StainedGlassRequest(_Request):
    """A chat (``messages``) or a raw ``prompt``, and which parts of the transform to return."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prompt: str | None = None
    return_plain_text_embeddings: bool = False
    return_transformed_embeddings: bool = False
    return_reconstructed_prompt: bool = False
    return_obfuscation_score: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> StainedGlassRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        return self

    def template_messages(self) -> list[dict[str, str]]:
        return template_messages(self.messages or [])


class StainedGlassResponse(BaseModel):
    tokenized_plain_text: list[str]
    plain_text_embeddings: list[list[float]] | None = None
    transformed_embeddings: list[list[float]] | None = None
    reconstructed_prompt: str | None = None
    obfuscation_score: float | None = None
