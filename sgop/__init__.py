"""Stained Glass Output Protection (SGOP): answers encrypted to a key only the requester holds.

A requester makes a :class:`KeyPair` and sends ``kp.request_headers()``; a
protected server answers with a :class:`ServerSession` per response; the
requester decrypts with :func:`decrypt_response` / :func:`decrypt_stream` or a
:class:`ClientSession`. The protocol is in docs/output-protection.md.

A library on its own: it imports nothing from ``proxy`` or ``inference_server``,
so a client, the proxy and a server can each use it. Key material is never
logged or shown in a ``repr``.

* :mod:`sgop.protocol`: headers, versions, key derivation, the bytes of a piece
* :mod:`sgop.keys`: key pairs and the refreshing key ring
* :mod:`sgop.sessions`: one response's encryption and decryption state
* :mod:`sgop.client`: the requester's helper
"""

from sgop.client import client_session, decrypt_chunk, decrypt_response, decrypt_stream
from sgop.keys import KeyPair, KeyRing
from sgop.protocol import (
    CLIENT_PUBLIC_KEY_HEADER,
    FLAG_END,
    HKDF_INFO_PREFIX,
    KEY_LENGTH,
    LATEST_VERSION,
    NONCE_LENGTH,
    PIECE_PREFIX,
    PUBLIC_KEY_LENGTH,
    SERVER_PUBLIC_KEY_HEADER,
    SUPPORTED_VERSIONS,
    V2_PREFIX,
    VERSION_HEADER,
    VERSIONS_HEADER,
    DecryptionError,
    InvalidPublicKeyError,
    NotProtectedError,
    OutputProtectionError,
    TruncatedError,
    VersionError,
    aad_v2,
    decode_public_key,
    decrypt_piece,
    derive_key,
    encrypt_piece,
    format_versions,
    is_protected_piece,
    negotiate,
    parse_versions,
    seal_record,
)
from sgop.sessions import ClientSession, ServerSession

__all__ = [
    "CLIENT_PUBLIC_KEY_HEADER",
    "FLAG_END",
    "HKDF_INFO_PREFIX",
    "KEY_LENGTH",
    "LATEST_VERSION",
    "NONCE_LENGTH",
    "PIECE_PREFIX",
    "PUBLIC_KEY_LENGTH",
    "SERVER_PUBLIC_KEY_HEADER",
    "SUPPORTED_VERSIONS",
    "V2_PREFIX",
    "VERSIONS_HEADER",
    "VERSION_HEADER",
    "ClientSession",
    "DecryptionError",
    "InvalidPublicKeyError",
    "KeyPair",
    "KeyRing",
    "NotProtectedError",
    "OutputProtectionError",
    "ServerSession",
    "TruncatedError",
    "VersionError",
    "aad_v2",
    "client_session",
    "decode_public_key",
    "decrypt_chunk",
    "decrypt_piece",
    "decrypt_response",
    "decrypt_stream",
    "derive_key",
    "encrypt_piece",
    "format_versions",
    "is_protected_piece",
    "negotiate",
    "parse_versions",
    "seal_record",
    "server_session",
]


def server_session(client_public_b64: str | bytes | None, version: int = 1, choices: int = 1) -> ServerSession:
    """Start encrypting one response to the requester's ``x-client-public-key``."""
    return ServerSession(client_public_b64, version, choices)
