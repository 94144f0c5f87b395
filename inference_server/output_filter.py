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
from proxy.output_protection import (
    CLIENT_PUBLIC_KEY_HEADER,
    SERVER_PUBLIC_KEY_HEADER,
    OutputProtectionError,
    server_session,
)

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

    With output protection (protocol v1, docs/output-protection.md), a request
    that carries ``x-client-public-key`` gets a fresh ephemeral key pair, every
    piece encrypted to it, and ``x-server-public-key`` in the response; a
    request without it is answered in clear.
    """
    client_key = request_headers.get(CLIENT_PUBLIC_KEY_HEADER)
    if not output_protection or not client_key:
        return PieceFilterChoice()
    try:
        session = server_session(client_key)
    except OutputProtectionError as exc:
        raise ApiError(str(exc), status=400, param=CLIENT_PUBLIC_KEY_HEADER) from None
    return PieceFilterChoice(session.encrypt_piece, {SERVER_PUBLIC_KEY_HEADER: session.public_header})
