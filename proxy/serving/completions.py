"""The completion service: render, transform, call the upstream, shape the answer.

Knows nothing of Flask. Chat and completions differ only in how the prompt is
rendered and how the answer is shaped; the upstream route (proxy/serving/route.py),
chosen once per request, says where the prompt goes and in which shape the
answer comes back. Everything else is one path, for whole and streamed answers alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import sgop
from proxy import limits, metrics, tracing
from proxy.errors import BadRequestError, UpstreamError
from proxy.openai_types import ChatCompletionRequest, CompletionRequest, ParserFactory, ResponseShaper
from proxy.parsers import OutputParser
from proxy.serving.checks import check_prompt_lengths, refuse_logprobs
from proxy.serving.protection import CLIENT_KEY_HEADER, decrypted, protection, relayed_key_headers
from proxy.serving.route import UpstreamRoute, chat_route, completions_route
from proxy.serving.until_stopped import UntilStopped, closing_usage
from proxy.serving.whole_answer import WholeAnswer
from proxy.settings import Settings
from proxy.sgt import RenderedPrompt, SGTRuntime
from proxy.stop import StopSequences, stop_list
from proxy.upstream import UpstreamClient

log = logging.getLogger(__name__)

STOP_UNDER_CLIENT_KEY = (
    "stop cannot be applied to an answer encrypted to your x-client-public-key: the proxy applies stop sequences "
    "itself (they are your text and never go to the inference service), and it cannot read this answer. Send "
    "the request without stop and cut the decrypted text yourself."
)


class Batches(Protocol):
    """An answer's batches of shaped events; ``close`` reaches the upstream even if iteration never started."""

    def __iter__(self) -> Iterator[list[dict[str, Any]]]: ...

    def __next__(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclass
class ServedResponse:
    """What the HTTP layer sends back: batches of shaped events (one event when not streamed) and headers."""

    events: Batches
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
    def chat(
        self, request: ChatCompletionRequest, headers: Mapping[str, str], record: metrics.RequestRecord
    ) -> ServedResponse:
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
            prompt = self.sgt.renderer.render_chat(messages, tools=tools)
            if self.settings.upstream_api == "chat":
                contents = [(m["role"], self.sgt.renderer.render_content(m["content"])) for m in messages]
                route = chat_route(self.sgt, request, contents)
            else:
                mistral_tools = self.settings.tool_parser == "mistral" and request.tools_enabled()
                route = completions_route(self.sgt, request, [prompt], keep_special_tokens=mistral_tools)
        return self._serve("chat", request, [prompt], route, headers, record, parsers=parsers)

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

    def complete(
        self, request: CompletionRequest, headers: Mapping[str, str], record: metrics.RequestRecord
    ) -> ServedResponse:
        limits.check_completion(request, self.settings, self.sgt.max_model_len)
        with tracing.span("sgp.render"):
            prompts = [self.sgt.renderer.render_text(text) for text in request.prompts()]
        limits.check_batch_tokens([len(p) for p in prompts], self.settings)
        return self._serve(
            "completion", request, prompts, completions_route(self.sgt, request, prompts), headers, record
        )

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
        route: UpstreamRoute,
        headers: Mapping[str, str],
        record: metrics.RequestRecord,
        parsers: ParserFactory | None = None,
    ) -> ServedResponse:
        """``prompts`` as rendered with the template (lengths, usage); ``route`` says where and how they go.

        Metrics go into ``record`` (the HTTP layer applies them once the answer is sent).
        """
        record.serving()
        if self.protected_answer(headers):
            refuse_logprobs(request)
        prompt_param = "messages" if kind == "chat" else "prompt"
        stops = stop_list(request.stop)
        if stops and self.keyring is None and headers.get(CLIENT_KEY_HEADER):
            raise BadRequestError(STOP_UNDER_CLIENT_KEY, param="stop", code="stop_not_supported")
        max_tokens = self._max_tokens(request.requested_max_tokens(), prompts, prompt_param)
        tracing.request_attributes(kind, request, prompts, max_tokens)
        with tracing.span("sgp.transform"):
            prompt_fields = route.prompt_fields(record)
        with record.upstream():
            payload = {
                "model": self.upstream_model(headers),
                **prompt_fields,
                "max_tokens": max_tokens,
                **route.sampling,
            }
            # a whole answer with stop strings is streamed from the upstream, to cut it off once all choices stopped
            cut_early = bool(stops) and not request.stream and route.streams_whole_answers
            if cut_early:
                payload.update(stream=True, stream_options={"include_usage": True})
            streamed = request.stream or cut_early
            keypair = self.keyring.current() if self.keyring else None
            up_headers = self._upstream_headers(headers, keypair)
            with tracing.upstream_call(kind, payload["model"], up_headers):
                reply = self.upstream.post(route.path, payload, up_headers, streamed=streamed)
            session, out_headers = protection(reply.headers, keypair, self._versions)
        upstream_batches = reply.batches() if session is None else decrypted(reply.batches(), session, streamed)
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
            upstream=route.shape,
            parsers=parsers,
            single_call=single_call,
            stops=stopper,
        )
        closing = None
        if stopper is not None and wants_usage:
            closing = closing_usage(stopper, shaper, sum(len(p) for p in prompts))
        batches: Batches = UntilStopped(upstream_batches, shaper.shape_batch, reply.close, stopper, closing)
        if cut_early:
            batches = WholeAnswer(batches, kind)
        events = tracing.relay(batches)
        return ServedResponse(events=events, streamed=request.stream, headers=out_headers)

    def protected_answer(self, headers: Mapping[str, str]) -> bool:
        """The answer is encrypted to a key: the proxy's (it decrypts) or the client's (it relays ciphertext)."""
        return self.keyring is not None or bool(headers.get(CLIENT_KEY_HEADER))

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
            out.update(relayed_key_headers(headers))
        if headers.get("X-Request-ID"):
            out["X-Request-ID"] = headers["X-Request-ID"]
        return out
