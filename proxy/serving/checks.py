"""Checks every served request passes before any SGT work or upstream call: each failure is a 400."""

from __future__ import annotations

from proxy.errors import BadRequestError
from proxy.openai_types import ChatCompletionRequest, CompletionRequest
from proxy.sgt import RenderedPrompt


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
