"""The one place every generated text piece passes through on its way out.

Each response gets a ``PieceFilter`` chosen by ``make_piece_filter``: it is
applied to every choice's text of a whole response and to every streamed
chunk's text (empty pieces included), with the response id (``cmpl-...``),
the choice index and whether the piece ends its choice: output protection
binds all three into each piece (protocol v2, docs/output-protection.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inference_server.errors import ApiError
from sgop import (
    CLIENT_PUBLIC_KEY_HEADER,
    VERSIONS_HEADER,
    OutputProtectionError,
    ServerSession,
    VersionError,
    negotiate,
    parse_versions,
)

PieceFilter = Callable[[str, int, str, bool], str]
"""``piece_filter(response_id, choice_index, text, last) -> text`` as sent on the wire."""


def identity_filter(response_id: str, index: int, text: str, last: bool) -> str:
    """Leave pieces as generated (the default, no output protection)."""
    return text


@dataclass
class PieceFilterChoice:
    """The filter for one response plus the response headers it needs."""

    piece_filter: PieceFilter = identity_filter
    headers: dict[str, str] = field(default_factory=dict)
    protected: bool = False


def make_piece_filter(output_protection: bool, request_headers: Mapping[str, str], choices: int) -> PieceFilterChoice:
    """Choose the filter for one request (called once per response, before generating).

    With output protection, a request that carries ``x-client-public-key`` gets
    a fresh ephemeral key pair, the highest protocol version both sides speak
    (``x-sgop-versions``; absent means 1), every piece encrypted, and
    ``x-server-public-key`` and ``x-sgop-version`` in the response; a request
    without a key is answered in clear. ``choices`` is the number of choices
    in the response (v2 end markers announce it).
    """
    client_key = request_headers.get(CLIENT_PUBLIC_KEY_HEADER)
    if not output_protection or not client_key:
        return PieceFilterChoice()
    try:
        version = negotiate(parse_versions(request_headers.get(VERSIONS_HEADER)))
    except VersionError as exc:
        raise ApiError(str(exc), status=400, param=VERSIONS_HEADER) from None
    try:
        session = ServerSession(client_key, version=version, choices=choices)
    except OutputProtectionError as exc:
        raise ApiError(str(exc), status=400, param=CLIENT_PUBLIC_KEY_HEADER) from None

    def encrypt(response_id: str, index: int, text: str, last: bool) -> str:
        return session.encrypt_piece(response_id, text, index, last)

    return PieceFilterChoice(encrypt, session.headers, protected=True)
