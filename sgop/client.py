"""The requester's helper: ask for a protected answer, then decrypt it whole or streamed.

::

    from sgop import KeyPair, decrypt_response

    keys = KeyPair.generate()
    raw = client.chat.completions.with_raw_response.create(
        model=..., messages=..., extra_headers=keys.request_headers())
    plain = decrypt_response(keys, raw.headers, raw.parse().model_dump())

``server`` is the response's headers (preferred: they also say the version)
or the ``x-server-public-key`` value alone, which means version 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sgop.keys import KeyPair
from sgop.protocol import SERVER_PUBLIC_KEY_HEADER, SUPPORTED_VERSIONS, answered_version, header
from sgop.sessions import ClientSession

ServerInfo = Mapping[str, str] | str | bytes | None
"""The response headers, or the ``x-server-public-key`` value alone (version 1)."""


def client_session(keypair: KeyPair, server: ServerInfo, accept: Iterable[int] = SUPPORTED_VERSIONS) -> ClientSession:
    """Start decrypting one response.

    Raises :class:`NotProtectedError` if the server key is absent or empty,
    :class:`InvalidPublicKeyError` if it is garbled and :class:`VersionError`
    if the answer's version is not one of ``accept`` (pass ``accept=(2,)`` to
    refuse version 1, which does not detect reordered or dropped pieces).
    """
    if isinstance(server, Mapping):
        version = answered_version(server, accept)
        return ClientSession(keypair, header(server, SERVER_PUBLIC_KEY_HEADER), version)
    version = answered_version(None, accept)
    return ClientSession(keypair, server, version)


def decrypt_response(
    keypair: KeyPair, server: ServerInfo, body: dict[str, Any], accept: Iterable[int] = SUPPORTED_VERSIONS
) -> dict[str, Any]:
    """Decrypt a whole completions (``choices[i].text``) or chat (``message.content``) response."""
    return client_session(keypair, server, accept).decrypt_response(body)


def decrypt_chunk(
    keypair: KeyPair, server: ServerInfo, chunk: dict[str, Any], accept: Iterable[int] = SUPPORTED_VERSIONS
) -> dict[str, Any]:
    """Decrypt one parsed stream chunk of a v1 answer (a v2 stream needs one :class:`ClientSession`)."""
    return client_session(keypair, server, accept).decrypt_chunk(chunk)


def decrypt_stream(
    keypair: KeyPair, server: ServerInfo, events: Iterable[dict[str, Any]], accept: Iterable[int] = SUPPORTED_VERSIONS
) -> Iterator[dict[str, Any]]:
    """Decrypt parsed SSE chunk dicts (completions ``text``, chat ``delta.content``) lazily.

    The headers are checked at once (before the first chunk is pulled), so a
    missing or garbled server key fails before any output is produced; a v2
    stream cut short raises :class:`TruncatedError` when it ends.
    """
    return client_session(keypair, server, accept).decrypt_stream(events)
