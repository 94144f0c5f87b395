"""Serving logic: render, transform, call the upstream, shape the answer.

Knows nothing of Flask. Chat and completions differ only in how the prompt is
rendered and how the answer is shaped; everything else is one path, for whole
and streamed answers alike.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import sgop
from proxy import limits, metrics, tracing
from proxy.errors import BadRequestError, OutputProtectionFailedError, UpstreamError
from proxy.openai_types import ChatCompletionRequest, CompletionRequest, ParserFactory, ResponseShaper
from proxy.parsers import OutputParser
from proxy.settings import Settings
from proxy.sgt import RenderedPrompt, SGTRuntime
from proxy.stop import StopSequences, UntilStopped, WholeAnswer, stop_list
from proxy.upstream import PromptEmbeds, UpstreamClient

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CLIENT_KEY_HEADER = sgop.CLIENT_PUBLIC_KEY_HEADER
SERVER_KEY_HEADER = sgop.SERVER_PUBLIC_KEY_HEADER
# client headers the upstream may see (the versions header only beside the client's key)
FORWARDED_HEADERS = ("Authorization", CLIENT_KEY_HEADER, sgop.VERSIONS_HEADER)
RELAYED_HEADERS = (SERVER_KEY_HEADER, sgop.VERSION_HEADER)  # upstream headers the client needs to decrypt itself
STOP_UNDER_CLIENT_KEY = (
    "stop cannot be applied to an answer encrypted to your x-client-public-key: the proxy applies stop sequences "
    "itself (they are your text and never go to the inference service), and it cannot read this answer. Send "
    "the request without stop and cut the decrypted text yourself."
)
NOT_PROTECTED = (
    "The inference service is not protected by output protection (its answer carries no "
    f"{SERVER_KEY_HEADER}); set SGP_OUTPUT_DECRYPTION=False for an unprotected inference service."
)


def check_prompt_lengths(
    prompts: list[RenderedPrompt], limit: int, param: str, room: int = 0, room_param: str | None = None
) -> int:
    """The longest prompt's length; a 400 for an empty prompt or one that leaves less than ``room`` tokens.

    ``room_param`` is the request field blamed when the room does not fit (``max_tokens`` when the client set it).
    """
    if not prompts or min(len(p) for p in prompts) == 0:
        raise BadRequestError("a prompt renders to no tokens", param=param, code="empty_prompt")
    longest = max(len(p) for p in prompts)
    if longest + room > limit:
        wanted = f" and {room} more to generate" if room else ""
        raise BadRequestError(
            f"the prompt has {longest} tokens{wanted}: more than this model's context of {limit} tokens",
            param=room_param or param,
            code="context_length_exceeded",
        )
    return longest


def refuse_logprobs(request: ChatCompletionRequest | CompletionRequest) -> None:
    """A 400 for logprobs under output protection: their tokens would come back in plain text beside the ciphertext."""
    field = "logprobs" if request.upstream_logprobs() is not None else None
    if field is None and getattr(request, "top_logprobs", None) is not None:
        field = "top_logprobs"
    if field is not None:
        raise BadRequestError(
            f"{field} is not available with output protection: the tokens would travel in plain text "
            "beside the encrypted answer",
            param=field,
            code="unsupported_with_output_protection",
        )


@dataclass
class ServedResponse:
    """What the HTTP layer sends back: batches of shaped events (one event when not streamed) and headers."""

    events: Iterator[list[dict[str, Any]]]
    streamed: bool
    headers: dict[str, str] = field(default_factory=dict)


class CompletionService:
    """One per worker; shared by its threads."""

    def __init__(
        self, settings: Settings, sgt: SGTRuntime, upstream: UpstreamClient, keyring: sgop.KeyRing | None = None
    ) -> None:
        self.settings = settings
        self.sgt = sgt
        self.upstream = upstream
        self.keyring = keyring
        # the output-protection versions the proxy asks for and accepts when it decrypts
        self._versions = tuple(v for v in sgop.SUPPORTED_VERSIONS if v >= settings.output_protection_min_version)
        self._upstream_model = settings.upstream_model
        self._model_lock = threading.Lock()

    # ---- endpoints ----
    def chat(self, request: ChatCompletionRequest, headers: Mapping[str, str]) -> ServedResponse:
        """Rendered here for a completions upstream; for a chat upstream each content is obfuscated alone.

        With ``SGP_UPSTREAM_API=chat`` the prompt is still rendered with the
        template, but only for the length check: the rendered length is exactly
        what the upstream sees when it applies the same template (the SGT's),
        where a sum of content tokens would need a guessed allowance.
        """
        limits.check_chat(request, self.settings, self.sgt.max_model_len)
        parsers = self._parsers(request, headers)
        messages = request.template_messages()
        tools = request.template_tools()
        with tracing.span("sgp.render"):
            if tools is None:
                prompt = self.sgt.renderer.render_chat(messages)
            else:
                prompt = self.sgt.renderer.render_chat(messages, tools=tools)
            contents = None
            if self.settings.upstream_api == "chat":
                contents = [(m["role"], self.sgt.renderer.render_content(m["content"])) for m in messages]
        return self._serve("chat", request, [prompt], headers, contents, parsers=parsers)

    def _parsers(self, request: ChatCompletionRequest, headers: Mapping[str, str]) -> ParserFactory | None:
        """The output parsers this request's answer goes through; a 400 where they cannot work.

        Relayed ciphertext (the client's own ``x-client-public-key``, no proxy
        decryption) cannot be parsed here: the client would get its tool calls
        as encrypted text with no way to tell them apart.
        """
        settings = self.settings
        if request.uses_tools() and settings.upstream_api == "chat":
            raise BadRequestError(
                "tool calling needs SGP_UPSTREAM_API=completions: a chat upstream would get the tools, calls and "
                "results as plain text",
                param="tools",
                code="tools_not_supported",
            )
        if not self.sgt.renders_tools:
            if request.tools_enabled():
                raise BadRequestError(
                    "this model's chat template does not render tools, so the model would never see them",
                    param="tools",
                    code="tools_not_supported",
                )
            for i, message in enumerate(request.messages):
                if message.tool_calls:
                    raise BadRequestError(
                        "this model's chat template does not render tool calls, so the model would not see this one",
                        param=f"messages.{i}.tool_calls",
                        code="tools_not_supported",
                    )
        tool_parser = settings.tool_parser if request.tools_enabled() else None
        if request.tools_enabled() and tool_parser is None:
            raise BadRequestError(
                'tool_choice "auto" needs the proxy to parse tool calls: set SGP_TOOL_PARSER (for example hermes), '
                'or send tool_choice "none"',
                param="tool_choice",
                code="tools_not_supported",
            )
        if tool_parser is None and settings.reasoning_parser is None:
            return None
        if self.keyring is None and headers.get(CLIENT_KEY_HEADER):
            what = "tool calls" if tool_parser else "reasoning (SGP_REASONING_PARSER is set)"
            raise BadRequestError(
                f"the answer is encrypted to the client's {CLIENT_KEY_HEADER}, so the proxy cannot parse {what} "
                f"out of it: send the request without {CLIENT_KEY_HEADER} (the proxy decrypts with "
                "SGP_OUTPUT_DECRYPTION=True), or without tools",
                param="tools" if tool_parser else None,
                code="encrypted_output_not_parsable",
            )
        reasoning_parser, streamed = settings.reasoning_parser, request.stream
        return lambda: OutputParser(tool_parser, reasoning_parser, streamed=streamed)

    def complete(self, request: CompletionRequest, headers: Mapping[str, str]) -> ServedResponse:
        limits.check_completion(request, self.settings, self.sgt.max_model_len)
        with tracing.span("sgp.render"):
            prompts = [self.sgt.renderer.render_text(text) for text in request.prompts()]
        limits.check_batch_tokens([len(p) for p in prompts], self.settings)
        return self._serve("completion", request, prompts, headers)

    def models(self, headers: Mapping[str, str]) -> dict[str, Any]:
        return self.upstream.get_models(self._upstream_headers(headers))

    def ready(self) -> bool:
        """The SGT is loaded (it is, or the worker would not have started) and the upstream answers."""
        try:
            self.upstream.get_models(self._upstream_headers({}), timeout=2)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    # ---- the one path ----
    def _serve(
        self,
        kind: Literal["chat", "completion"],
        request: ChatCompletionRequest | CompletionRequest,
        prompts: list[RenderedPrompt],
        headers: Mapping[str, str],
        contents: list[tuple[str, RenderedPrompt]] | None = None,
        parsers: ParserFactory | None = None,
    ) -> ServedResponse:
        """``contents`` (role, content alone) for a chat upstream: ``prompts`` then serve the length check only."""
        started = time.perf_counter()
        if self.protected_answer(headers):
            refuse_logprobs(request)
        upstream_chat = contents is not None
        prompt_param = "messages" if kind == "chat" else "prompt"
        stops = stop_list(request.stop)
        if stops and self.keyring is None and headers.get(CLIENT_KEY_HEADER):
            raise BadRequestError(STOP_UNDER_CLIENT_KEY, param="stop", code="stop_not_supported")
        max_tokens = self._max_tokens(request.requested_max_tokens(), prompts, prompt_param)
        tracing.request_attributes(kind, request, prompts, max_tokens)
        deferred = contents is None and len(prompts) > 1  # a prompt list: each one transformed as the body is sent
        with contextlib.nullcontext() if deferred else metrics.transform(kind), tracing.span("sgp.transform"):
            if contents is not None:
                prompt_fields: dict[str, Any] = {"messages": [self._embeds_message(r, c) for r, c in contents]}
            elif deferred:
                prompt_fields = {"prompt_embeds": [self._deferred_embeds(kind, p) for p in prompts]}
            else:
                prompt_fields = {"prompt_embeds": PromptEmbeds(self.sgt.obfuscate(prompts[0]))}
        with metrics.upstream_call(kind):
            payload = {
                "model": self.upstream_model(headers),
                **prompt_fields,
                "max_tokens": max_tokens,
                **(request.chat_sampling_payload() if upstream_chat else request.sampling_payload()),
            }
            if self.settings.tool_parser == "mistral" and isinstance(request, ChatCompletionRequest):
                if request.tools_enabled():  # [TOOL_CALLS] is a special token: it must reach the parser
                    payload["skip_special_tokens"] = False
            # a whole answer with stop strings is streamed from the upstream, to cut it off once all choices stopped
            cut_early = bool(stops) and not request.stream and not upstream_chat
            if cut_early:
                payload.update(stream=True, stream_options={"include_usage": True})
            streamed = request.stream or cut_early
            keypair = self.keyring.current() if self.keyring else None
            up_headers = self._upstream_headers(headers, keypair)
            path = "/v1/chat/completions" if upstream_chat else "/v1/completions"
            with tracing.upstream_call(kind, payload["model"], up_headers):
                reply = self.upstream.post(path, payload, up_headers, streamed=streamed)
            session, out_headers = self._protection(reply.headers, keypair)
        upstream_batches = reply.batches() if session is None else _decrypted(reply.batches(), session, streamed)
        wants_usage = cut_early or bool(
            request.stream and request.stream_options and request.stream_options.include_usage
        )
        counter = self.sgt.renderer.count_tokens if wants_usage else None
        stopper = StopSequences(stops, request.n * len(prompts), counter) if stops else None
        single_call = getattr(request, "parallel_tool_calls", None) is False
        # parsed after decryption and after stop strings: the shaper sees the plain text the client would
        shaper = ResponseShaper(
            kind,
            request.model,
            streamed,
            upstream_chat=upstream_chat,
            parsers=parsers,
            single_call=single_call,
            stops=stopper,
        )
        closing = None
        if stopper is not None and wants_usage:
            prompt_tokens = sum(len(p) for p in prompts)

            def closing() -> list[dict[str, Any]]:  # the upstream's own usage chunk never comes: cut off before it
                completion = stopper.completion_tokens()
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion}
                return [shaper.usage_event({**usage, "total_tokens": prompt_tokens + completion})]

        batches: Iterator[list[dict[str, Any]]] = UntilStopped(
            upstream_batches, shaper.shape_batch, reply.close, stopper, closing
        )
        if cut_early:
            batches = WholeAnswer(batches, kind)
        events = tracing.relay(metrics.RelayedEvents(batches, kind, request.stream, started))
        return ServedResponse(events=events, streamed=request.stream, headers=out_headers)

    def protected_answer(self, headers: Mapping[str, str]) -> bool:
        """The answer is encrypted to a key: the proxy's (it decrypts) or the client's (it relays ciphertext)."""
        return self.keyring is not None or bool(headers.get(CLIENT_KEY_HEADER))

    def _deferred_embeds(self, kind: Literal["chat", "completion"], prompt: RenderedPrompt) -> PromptEmbeds:
        """Embeddings made when the body reaches them and dropped once sent: a list's never all live at once.

        Each prompt's transform is timed alone (one observation per prompt).
        """

        def make() -> torch.Tensor:
            with metrics.transform(kind):
                return self.sgt.obfuscate(prompt)

        return PromptEmbeds.deferred(make, (len(prompt), self.sgt.hidden_size), self.sgt.table.dtype)

    def _embeds_message(self, role: str, content: RenderedPrompt) -> dict[str, Any]:
        """A chat message whose content is one ``prompt_embeds`` part; an empty content stays an empty string."""
        if not len(content):
            return {"role": role, "content": ""}
        return {"role": role, "content": [{"type": "prompt_embeds", "data": PromptEmbeds(self.sgt.obfuscate(content))}]}

    def _max_tokens(self, requested: int | None, prompts: list[RenderedPrompt], param: str) -> int:
        """Reject prompts the model cannot hold before anything is sent upstream."""
        limit = self.sgt.max_model_len
        if requested is None:
            longest = check_prompt_lengths(prompts, limit, param, room=1)
            return min(self.settings.max_new_tokens, limit - longest)
        check_prompt_lengths(prompts, limit, param, room=requested, room_param="max_tokens")
        return requested

    def upstream_model(self, headers: Mapping[str, str]) -> str:
        """SGP_UPSTREAM_MODEL, else the upstream's first served model (asked once)."""
        if self._upstream_model is None:
            with self._model_lock:
                if self._upstream_model is None:
                    models = self.upstream.get_models(self._upstream_headers(headers))
                    try:
                        self._upstream_model = str(models["data"][0]["id"])
                    except (KeyError, IndexError, TypeError):
                        raise UpstreamError(
                            "the inference service serves no model", status=502, code="no_upstream_model"
                        ) from None
        return self._upstream_model

    def _upstream_headers(self, headers: Mapping[str, str], keypair: sgop.KeyPair | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.settings.upstream_basic_auth is None and headers.get("Authorization"):
            out["Authorization"] = headers["Authorization"]  # requests adds Basic auth otherwise
        if keypair is not None:
            out.update(keypair.request_headers(self._versions))  # our key, and the versions we accept
        elif headers.get(CLIENT_KEY_HEADER):
            out[CLIENT_KEY_HEADER] = headers[CLIENT_KEY_HEADER]
            if headers.get(sgop.VERSIONS_HEADER):
                out[sgop.VERSIONS_HEADER] = headers[sgop.VERSIONS_HEADER]
        if headers.get("X-Request-ID"):
            out["X-Request-ID"] = headers["X-Request-ID"]
        return out

    def _protection(
        self, reply_headers: Mapping[str, str], keypair: sgop.KeyPair | None
    ) -> tuple[sgop.ClientSession | None, dict[str, str]]:
        """Decrypt with the request's own key, or relay the server's key and version to the client."""
        if keypair is None:
            return None, {name: reply_headers[name] for name in RELAYED_HEADERS if reply_headers.get(name)}
        if not reply_headers.get(SERVER_KEY_HEADER):
            raise OutputProtectionFailedError(NOT_PROTECTED, code="output_not_protected")
        try:
            return sgop.client_session(keypair, reply_headers, self._versions), {}
        except sgop.OutputProtectionError as exc:
            raise OutputProtectionFailedError(f"output protection: {exc}", code="output_protection_failed") from None


def _decrypted(
    batches: Iterator[list[dict[str, Any]]], session: sgop.ClientSession, streamed: bool
) -> Iterator[list[dict[str, Any]]]:
    """The upstream's events with their text decrypted in place; a v2 answer is checked complete at its end.

    Runs before the shaper: everything after it (shaping, stop sequences) sees plain text. A whole
    answer is one batch, checked before it is yielded (the HTTP layer takes it and closes the rest).
    """
    try:
        for batch in batches:
            for event in batch:
                session.open_event(event)
            if not streamed:
                session.finish()
            yield batch
        session.finish()
    except sgop.OutputProtectionError as exc:
        raise OutputProtectionFailedError(
            f"output protection: the answer failed to decrypt or verify ({type(exc).__name__})",
            code="output_protection_failed",
        ) from None
