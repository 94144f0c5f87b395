"""The one place every generated text piece passes through on its way out.

Each response gets a ``PieceFilter`` chosen by ``make_piece_filter``: it is
applied to every ``choices[i].text`` of a whole response and to every streamed
chunk's ``choices[i].text`` (empty pieces included), with the response id
(``cmpl-...``), which output protection uses as the AEAD associated data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inference_server.errors import ApiError

PieceFilter = Callable[[str, str], str]
"""``piece_filter(response_id, text) -> text`` as sent on the wire."""


def identity_filter(response_id: str, text: str) -> str:
    """Leave pieces as generated (the default, no output protection)."""
    return text


@dataclass
class PieceFilterChoice:
    """The filter for one response plus the response headers it needs."""

    piece_filter: PieceFilter = identity_filter
    headers: dict[str, str] = field(default_factory=dict)


def make_piece_filter(output_protection: bool, request_headers: Mapping[str, str]) -> PieceFilterChoice:
    """Choose the filter for one request (called once per response, before generating).

    Output protection (protocol v1, docs/) goes here: read
    ``x-client-public-key`` from ``request_headers``, make the per-response
    ephemeral key, return an encrypting filter and ``{"x-server-public-key": ...}``.
    Raise ``ApiError`` for a missing or bad client key.
    """
    if not output_protection:
        return PieceFilterChoice()
    raise ApiError("output protection is not implemented in this build", status=501)
