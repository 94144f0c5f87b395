"""Checks that run before any work: penalties vLLM cannot take, and the cost of a request.

Why here and first: a request's cost (tokenizing, rendering, transforming) is
bounded by cheap counts taken on the parsed body, so 30,000 messages or a
7 MB content are refused in milliseconds instead of holding a thread for
seconds; and a penalty that would kill the shared upstream's engine never
leaves the proxy.
"""

from __future__ import annotations

from proxy.errors import BadRequestError
from proxy.openai_types import ChatCompletionRequest, ChatMessage, CompletionRequest
from proxy.settings import Settings

PENALTY_ISSUE = "vllm-project/vllm#57719"
NEUTRAL_PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}


def check_penalties(request: ChatCompletionRequest | CompletionRequest, settings: Settings) -> None:
    """A 400 for a non-neutral penalty unless ``SGP_ALLOW_PENALTIES``: with prompt_embeds one kills vLLM's engine."""
    if settings.allow_penalties:
        return
    for name, neutral in NEUTRAL_PENALTIES.items():
        value = getattr(request, name, None)
        if value is not None and value != neutral:
            raise BadRequestError(
                f"{name} must be {neutral:g} (or absent): a prompt_embeds request with a penalty stops the "
                f"inference engine ({PENALTY_ISSUE}); the operator can allow penalties for a patched upstream "
                "with SGP_ALLOW_PENALTIES=True",
                param=name,
                code="unsupported_penalty",
            )


def _chars(message: ChatMessage) -> int:
    """Characters of the client text a message gives the template: its content (text parts joined by
    newlines, counted without joining them), its ``name`` and its tool calls' names and arguments."""
    content = message.content
    name = len(message.name or "")
    calls = sum(len(c.function.name) + len(c.function.arguments) for c in message.tool_calls or ())
    if isinstance(content, list):
        return name + calls + sum(len(part.get("text") or "") for part in content) + max(len(content) - 1, 0)
    return name + calls + len(content or "")


def _too_long(chars: int, limit: int, param: str, what: str) -> BadRequestError:
    return BadRequestError(
        f"{what} has {chars} characters: more than this model's context can hold ({limit}; "
        "SGP_MAX_CHARS_PER_TOKEN characters per context token)",
        param=param,
        code="context_length_exceeded",
    )


def check_chat(request: ChatCompletionRequest, settings: Settings, context: int) -> None:
    """Penalties, the number of messages and their characters: before the template or the tokenizer runs."""
    check_penalties(request, settings)
    tools = sum(len(t.model_dump_json(exclude_none=True)) for t in request.tools or ())  # rendered too
    check_messages(request.messages, settings, context, tools)


def check_messages(messages: list[ChatMessage], settings: Settings, context: int, extra_chars: int = 0) -> None:
    if len(messages) > settings.max_messages:
        raise BadRequestError(
            f"{len(messages)} messages: at most {settings.max_messages} (SGP_MAX_MESSAGES)",
            param="messages",
            code="too_many_messages",
        )
    limit = int(settings.max_chars_per_token * context)
    chars = sum(_chars(m) for m in messages) + extra_chars
    if chars > limit:
        raise _too_long(chars, limit, "messages", "the conversation")


def check_completion(request: CompletionRequest, settings: Settings, context: int) -> None:
    """Penalties, and the characters of each prompt and of the whole list: before the tokenizer runs."""
    check_penalties(request, settings)
    check_prompt_chars(request.prompts(), settings, context)


def check_prompt_chars(prompts: list[str], settings: Settings, context: int) -> None:
    limit = int(settings.max_chars_per_token * context)
    for text in prompts:
        if len(text) > limit:
            raise _too_long(len(text), limit, "prompt", "a prompt")
    batch_limit = int(settings.max_chars_per_token * settings.max_batch_tokens)
    total = sum(len(text) for text in prompts)
    if len(prompts) > 1 and total > batch_limit:
        raise _too_long(total, batch_limit, "prompt", "the prompt list (SGP_MAX_BATCH_TOKENS tokens in all)")


def check_batch_tokens(lengths: list[int], settings: Settings) -> None:
    """A prompt list holds at most ``SGP_MAX_BATCH_TOKENS`` tokens in all (a single prompt: the context only)."""
    total = sum(lengths)
    if len(lengths) > 1 and total > settings.max_batch_tokens:
        raise BadRequestError(
            f"the prompt list has {total} tokens in all: at most {settings.max_batch_tokens} (SGP_MAX_BATCH_TOKENS)",
            param="prompt",
            code="too_many_tokens",
        )
