"""Chat messages (text and ``prompt_embeds`` content parts) to one prompt, as vLLM 0.26 does.

Why splice: the client sends the embeddings of message contents only; the
server owns the chat template. The template is rendered with a placeholder
for each ``prompt_embeds`` part, the text between placeholders is tokenized
(no special tokens added) and embedded with the model's own table, and each
placeholder is replaced by its decoded embedding rows.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import torch

from inference_server.errors import ApiError
from inference_server.generation import Engine, Prompt

ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_prompt(messages: object, engine: Engine) -> Prompt:
    """The one prompt of a chat request; ``ApiError`` (400) for anything vLLM would refuse."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list", param="messages")
    nonce = uuid.uuid4().hex  # placeholders no client text can forge
    embeds: list[torch.Tensor] = []
    rendered = [_template_message(m, i, engine, nonce, embeds) for i, m in enumerate(messages)]
    text = engine.render_chat(rendered)
    pieces = re.split(f"<{nonce}:(\\d+)>", text)
    order = [int(i) for i in pieces[1::2]]
    if order != list(range(len(embeds))):
        raise ApiError("the chat template did not keep every prompt_embeds part once, in order", param="messages")
    if not embeds:
        ids = engine.encode_text(text)
        if not ids:
            raise ApiError("the messages render to no tokens", param="messages")
        return Prompt(token_ids=ids)
    rows: list[torch.Tensor] = []
    for i, segment in enumerate(pieces[0::2]):
        if segment:
            rows.append(engine.embed_ids(engine.encode_text(segment)))
        if i < len(embeds):
            rows.append(embeds[i])
    return Prompt(embeds=torch.cat(rows))


def _template_message(
    message: object, index: int, engine: Engine, nonce: str, embeds: list[torch.Tensor]
) -> dict[str, str]:
    """One message for the template: its text, with a placeholder where each prompt_embeds part goes."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(f"{where} must be an object", param="messages")
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(f"{where}.role must be one of {', '.join(ROLES)}", param="messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or ""}
    if not isinstance(content, list):
        raise ApiError(f"{where}.content must be a string or a list of parts", param="messages")
    texts = [_part_text(part, f"{where}.content[{j}]", engine, nonce, embeds) for j, part in enumerate(content)]
    return {"role": role, "content": "\n".join(texts)}  # parts joined by newlines, as vLLM joins text parts


def _part_text(part: Any, where: str, engine: Engine, nonce: str, embeds: list[torch.Tensor]) -> str:
    if not isinstance(part, dict):
        raise ApiError(f"{where} must be an object", param="messages")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ApiError(f"{where}.text must be a string", param="messages")
        return part["text"]
    if kind == "prompt_embeds":
        if "data" not in part:
            raise ApiError(f"{where}.data is required", param="messages")
        embeds.append(engine.decode_embeds(part["data"]))
        return f"<{nonce}:{len(embeds) - 1}>"
    raise ApiError(f"{where}: content parts of type {kind!r} are not supported", param="messages")
