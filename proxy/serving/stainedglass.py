"""``/v1/stainedglass``: show what the Stained Glass Transform does to a prompt.

Renders the prompt exactly as the completion endpoints do, transforms it, and
answers with the tokens, optionally the plain and transformed embeddings, the
nearest-neighbour decode of the transformed embeddings (what an eavesdropper
with the embedding table would read) and the obfuscation score (the share of
obfuscated tokens that decode wrongly). Nothing is sent upstream and nothing of
the prompt is logged. Knows nothing of Flask.

A debugging aid that reveals the transform: off unless ``SGP_ENABLE_STAINEDGLASS=True``.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import BadRequestError
from proxy.openai_types import StainedGlassRequest
from proxy.serving.checks import check_prompt_lengths
from proxy.sgt import RenderedPrompt, SGTRuntime
from proxy.sgt.nearest import nearest_tokens


def render(sgt: SGTRuntime, request: StainedGlassRequest) -> RenderedPrompt:
    prompt = (
        sgt.renderer.render_chat(request.template_messages())
        if request.messages is not None
        else sgt.renderer.render_text(request.prompt or "")
    )
    check_prompt_lengths([prompt], sgt.max_model_len, "messages" if request.messages is not None else "prompt")
    return prompt


def stainedglass(sgt: SGTRuntime, request: StainedGlassRequest, max_values: int) -> dict[str, Any]:
    """The /v1/stainedglass answer for one request.

    The embeddings asked for hold tokens x hidden values each (up to about 25
    bytes of JSON a value); more than ``max_values`` in all is a 400, before
    anything is computed: at hidden 1024 and 8192 tokens, both arrays made a
    309 MB answer from a 12 KB request.
    """
    prompt = render(sgt, request)
    arrays = int(request.return_plain_text_embeddings) + int(request.return_transformed_embeddings)
    values = len(prompt) * sgt.hidden_size * arrays
    if values > max_values:
        raise BadRequestError(
            f"the embeddings asked for hold {values} values ({len(prompt)} tokens x hidden {sgt.hidden_size} x "
            f"{arrays}): more than this proxy's limit of {max_values} (SGP_STAINEDGLASS_MAX_VALUES)",
            param="messages" if request.messages is not None else "prompt",
            code="stainedglass_too_large",
        )
    ids = prompt.ids.tolist()
    answer: dict[str, Any] = {"tokenized_plain_text": [sgt.renderer.decode([i]) for i in ids]}
    if request.return_plain_text_embeddings:
        answer["plain_text_embeddings"] = sgt.embed(prompt).float().tolist()
    need_transformed = (
        request.return_transformed_embeddings or request.return_reconstructed_prompt or request.return_obfuscation_score
    )
    if not need_transformed:
        return answer
    transformed = sgt.obfuscate(prompt)
    if request.return_transformed_embeddings:
        answer["transformed_embeddings"] = transformed.float().tolist()
    if request.return_reconstructed_prompt or request.return_obfuscation_score:
        with sgt.slot():
            nearest = nearest_tokens(transformed, sgt.table)
        if request.return_reconstructed_prompt:
            answer["reconstructed_prompt"] = sgt.renderer.decode(nearest.tolist())
        if request.return_obfuscation_score:
            mask = prompt.mask
            hidden = int(mask.sum())
            wrong = int((nearest[mask] != prompt.ids[mask]).sum())
            answer["obfuscation_score"] = wrong / hidden if hidden else 0.0
    return answer
