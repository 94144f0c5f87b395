"""Where and how a request goes upstream, chosen once per request.

``SGP_UPSTREAM_API=completions`` (the default): the rendered prompt's
embeddings go to ``/v1/completions`` as ``prompt_embeds`` and the answer is
reshaped into the client's endpoint. ``chat``: each message's content goes
alone, as a ``prompt_embeds`` part, to ``/v1/chat/completions``, and the
chat-shaped answer is relayed. Every later step reads the route; none asks
the settings again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy import metrics
from proxy.openai_types import ChatCompletionRequest, CompletionRequest, UpstreamShape
from proxy.sgt import RenderedPrompt, SGTRuntime
from proxy.upstream import PromptEmbeds

if TYPE_CHECKING:
    import torch

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class UpstreamRoute:
    """The upstream path, the prompt fields (made when called: the SGT work), the sampling payload, the shape."""

    path: str
    prompt_fields: Callable[[metrics.RequestRecord], dict[str, Any]]
    sampling: dict[str, Any]
    shape: UpstreamShape  # how the shaper reads the answer: "completion" events reshaped, "chat" events relayed

    @property
    def streams_whole_answers(self) -> bool:
        """A whole answer with stop strings may be streamed from the upstream and cut off early (completions only)."""
        return self.shape == "completion"


def completions_route(
    sgt: SGTRuntime,
    request: ChatCompletionRequest | CompletionRequest,
    prompts: list[RenderedPrompt],
    keep_special_tokens: bool = False,
) -> UpstreamRoute:
    """The rendered prompts' embeddings to ``/v1/completions``; a prompt list's made one by one as they are sent."""
    sampling = request.sampling_payload()
    if keep_special_tokens:  # a parser reads a special token (mistral's [TOOL_CALLS]): it must reach it
        sampling["skip_special_tokens"] = False

    def prompt_fields(record: metrics.RequestRecord) -> dict[str, Any]:
        if len(prompts) > 1:  # each one transformed (and timed) as the body reaches it
            return {"prompt_embeds": [_deferred_embeds(sgt, p, record) for p in prompts]}
        with record.transform():
            return {"prompt_embeds": PromptEmbeds(sgt.obfuscate(prompts[0]))}

    return UpstreamRoute(COMPLETIONS_PATH, prompt_fields, sampling, "completion")


def chat_route(
    sgt: SGTRuntime, request: ChatCompletionRequest, contents: list[tuple[str, RenderedPrompt]]
) -> UpstreamRoute:
    """Each message's content (role, content rendered alone) obfuscated alone, to ``/v1/chat/completions``."""

    def prompt_fields(record: metrics.RequestRecord) -> dict[str, Any]:
        with record.transform():
            return {"messages": [_embeds_message(sgt, role, content) for role, content in contents]}

    return UpstreamRoute(CHAT_PATH, prompt_fields, request.chat_sampling_payload(), "chat")


def _deferred_embeds(sgt: SGTRuntime, prompt: RenderedPrompt, record: metrics.RequestRecord) -> PromptEmbeds:
    """Embeddings made when the body reaches them and dropped once sent: a list's never all live at once.

    Each prompt's transform is timed alone (one observation per prompt).
    """

    def make() -> torch.Tensor:
        with record.transform():
            return sgt.obfuscate(prompt)

    return PromptEmbeds.deferred(make, (len(prompt), sgt.hidden_size), sgt.table.dtype)


def _embeds_message(sgt: SGTRuntime, role: str, content: RenderedPrompt) -> dict[str, Any]:
    """A chat message whose content is one ``prompt_embeds`` part; an empty content stays an empty string."""
    if not len(content):
        return {"role": role, "content": ""}
    return {"role": role, "content": [{"type": "prompt_embeds", "data": PromptEmbeds(sgt.obfuscate(content))}]}
