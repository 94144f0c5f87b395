"""The wire protocol of Stained Glass Output Protection, versions 1 and 2.

Pure functions and constants: no state, no Flask, nothing from ``proxy``. The
exact bytes are in docs/output-protection.md and pinned by known-answer tests
(tests/test_output_protection_unit.py): changing anything here breaks clients.

Version 1 (a piece is bound to the response id only)::

    key   = HKDF-SHA256(ikm=X25519(own_private, peer_public), salt=b"",
                        info=b"sgop-v1" || client_pub_raw || server_pub_raw, length=32)
    value = "sgop1:" + b64(nonce12 || AESGCM(key).encrypt(nonce12, text_utf8, response_id_utf8))

Version 2 (a piece is bound to the response id, its choice and its place, and
every choice ends with an authenticated end marker)::

    key    = HKDF-SHA256(same ikm and salt, info=b"sgop-v2" || client_pub_raw || server_pub_raw)
    aad    = b"sgop-v2" || u32(len(id)) || id_utf8 || u32(choice) || u64(counter) || u8(flags)
    record = b64(u8(flags) || nonce12 || AESGCM(key).encrypt(nonce12, plaintext, aad))
    value  = "sgop2:" + ".".join(records)

Integers are big-endian. ``counter`` counts the records of one choice from 0.
A content record has flags 0 and the piece's UTF-8 text as plaintext; the end
marker has flags ``FLAG_END`` and ``u32(number of choices in the response)``
as plaintext.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# ---- the headers: the one place they are named ----------------------------------------------
CLIENT_PUBLIC_KEY_HEADER = "x-client-public-key"
"""Request: the requester's X25519 public key, base64 of its 32 raw bytes."""
SERVER_PUBLIC_KEY_HEADER = "x-server-public-key"
"""Response: the server's ephemeral public key for this response, same encoding."""
VERSIONS_HEADER = "x-sgop-versions"
"""Request: the protocol versions the requester speaks, e.g. ``2,1``; absent means ``1``."""
VERSION_HEADER = "x-sgop-version"
"""Response: the version the server answered in; absent means ``1``."""

SUPPORTED_VERSIONS = (2, 1)
"""The versions this package speaks, most preferred first."""
LATEST_VERSION = 2

PUBLIC_KEY_LENGTH = 32
KEY_LENGTH = 32
NONCE_LENGTH = 12
TAG_LENGTH = 16
PIECE_PREFIX = "sgop1:"
"""The prefix of a v1 value."""
V2_PREFIX = "sgop2:"
"""The prefix of a v2 value; its records follow, separated by ``V2_SEPARATOR``."""
V2_SEPARATOR = "."
HKDF_INFO_PREFIX = b"sgop-v1"
V2_AAD_PREFIX = b"sgop-v2"
FLAG_END = 0x01
"""A v2 record with this flag ends its choice; its plaintext is u32(number of choices)."""
_MAX_U32 = 2**32 - 1
_MAX_VERSION = 999
_RECORD_MIN = 1 + NONCE_LENGTH + TAG_LENGTH


# ---- errors -----------------------------------------------------------------------------------
class OutputProtectionError(Exception):
    """Base of every output-protection failure, so callers can catch one type."""


class NotProtectedError(OutputProtectionError):
    """The response is not output-protected where protection was required.

    Raised when the ``x-server-public-key`` header is missing or a text value
    lacks the version's prefix: the upstream is not a protected server.
    """


class DecryptionError(OutputProtectionError):
    """A protected value is malformed or fails to authenticate (tampered, reordered, wrong key or id)."""


class TruncatedError(DecryptionError):
    """A v2 answer is incomplete: a choice lacks its end marker, or a piece comes after it."""


class InvalidPublicKeyError(OutputProtectionError):
    """A public-key header value is not base64 of 32 raw X25519 bytes (or is unusable)."""


class VersionError(OutputProtectionError):
    """A versions header is malformed, or the two sides share no protocol version."""


# ---- base64 -----------------------------------------------------------------------------------
def b64encode(data: bytes) -> str:
    """Standard alphabet, padded."""
    return pybase64.b64encode_as_string(data)


def b64decode(value: str | bytes) -> bytes:
    """Strict standard-alphabet, padded base64 decoding (raises ValueError)."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="strict")
    return pybase64.b64decode(value, validate=True)


# ---- keys -------------------------------------------------------------------------------------
def decode_public_key(value: str | bytes | None, *, header: str = "public key") -> bytes:
    """Return the 32 raw bytes of a public key sent on the wire as base64.

    Raises :class:`InvalidPublicKeyError` naming ``header`` (never echoing the
    value) so that a bad header becomes a clear client error.
    """
    if value is None:
        raise InvalidPublicKeyError(f"{header} is missing")
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        raw = b64decode(text.strip())
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise InvalidPublicKeyError(f"{header} is not valid base64") from exc
    if len(raw) != PUBLIC_KEY_LENGTH:
        raise InvalidPublicKeyError(
            f"{header} must be base64 of {PUBLIC_KEY_LENGTH} raw X25519 bytes, got {len(raw)} bytes"
        )
    return raw


def derive_key(
    private_key: X25519PrivateKey,
    peer_public_raw: bytes,
    client_public_raw: bytes,
    server_public_raw: bytes,
    *,
    peer_header: str = "peer public key",
    version: int = 1,
) -> bytes:
    """Derive the 32-byte AES-256-GCM key shared by client and server (both sides).

    ``info = b"sgop-v<version>" || client_pub_raw || server_pub_raw``: binding
    both public keys ties the key to exactly this pair, and the version keeps
    a v1 key from ever opening a v2 record (and back).
    """
    if version not in SUPPORTED_VERSIONS:
        raise VersionError(f"unknown output-protection version {version}")
    if len(peer_public_raw) != PUBLIC_KEY_LENGTH:
        raise InvalidPublicKeyError(f"{peer_header} must be 32 raw bytes")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_raw))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise InvalidPublicKeyError(f"{peer_header} is not usable for X25519") from exc
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_LENGTH,
        salt=b"",
        info=b"sgop-v%d" % version + client_public_raw + server_public_raw,
    ).derive(shared)


def _nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return os.urandom(NONCE_LENGTH)
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
    return nonce


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


# ---- version 1 --------------------------------------------------------------------------------
def is_protected_piece(value: object) -> bool:
    """True if ``value`` looks like a protected value of either version (a string with a prefix)."""
    return isinstance(value, str) and (value.startswith(PIECE_PREFIX) or value.startswith(V2_PREFIX))


def encrypt_piece(key: bytes | AESGCM, response_id: str, text: str, nonce: bytes | None = None) -> str:
    """Encrypt one v1 text piece; ``nonce`` is random unless injected (known-answer tests only)."""
    nonce = _nonce(nonce)
    sealed = _aead(key).encrypt(nonce, text.encode("utf-8"), response_id.encode("utf-8"))
    return PIECE_PREFIX + b64encode(nonce + sealed)


def decrypt_piece(key: bytes | AESGCM, response_id: str, piece: object) -> str:
    """Decrypt one v1 piece; the response id is the associated data.

    Raises :class:`NotProtectedError` if ``piece`` lacks the ``sgop1:`` prefix and
    :class:`DecryptionError` if it is malformed or fails to authenticate.
    """
    if not isinstance(piece, str):
        raise DecryptionError(f"protected piece must be a string, got {type(piece).__name__}")
    if not piece.startswith(PIECE_PREFIX):
        if piece.startswith(V2_PREFIX):
            raise DecryptionError("a v2 value in a v1 answer")
        raise NotProtectedError(f"text piece is not output-protected (no {PIECE_PREFIX!r} prefix)")
    if not isinstance(response_id, str):
        raise DecryptionError("response has no string 'id' (the associated data)")
    try:
        blob = b64decode(piece[len(PIECE_PREFIX) :])
    except (ValueError, UnicodeError) as exc:
        raise DecryptionError("protected piece is not valid base64") from exc
    if len(blob) < NONCE_LENGTH + TAG_LENGTH:
        raise DecryptionError("protected piece is too short")
    try:
        plain = _aead(key).decrypt(blob[:NONCE_LENGTH], blob[NONCE_LENGTH:], response_id.encode("utf-8"))
    except InvalidTag as exc:
        raise DecryptionError("protected piece failed to authenticate") from exc
    return _text(plain)


def _text(plain: bytes) -> str:
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptionError("protected piece is not UTF-8 text") from exc


# ---- version 2 --------------------------------------------------------------------------------
def aad_v2(response_id: str, choice: int, counter: int, flags: int) -> bytes:
    """The associated data of one v2 record: what it is bound to."""
    rid = response_id.encode("utf-8")
    if len(rid) > _MAX_U32 or not 0 <= choice <= _MAX_U32 or not 0 <= counter < 2**64 or not 0 <= flags <= 255:
        raise ValueError("response id, choice, counter or flags out of range")
    return V2_AAD_PREFIX + struct.pack(">I", len(rid)) + rid + struct.pack(">IQB", choice, counter, flags)


def end_plaintext(choices: int) -> bytes:
    """The plaintext of an end marker: how many choices the whole response has."""
    if not 1 <= choices <= _MAX_U32:
        raise ValueError("a response has 1 to 2**32-1 choices")
    return struct.pack(">I", choices)


def seal_record(
    key: bytes | AESGCM,
    response_id: str,
    choice: int,
    counter: int,
    plaintext: bytes,
    flags: int = 0,
    nonce: bytes | None = None,
) -> str:
    """One v2 record, base64 (no prefix): ``flags || nonce || ciphertext || tag``."""
    nonce = _nonce(nonce)
    sealed = _aead(key).encrypt(nonce, plaintext, aad_v2(response_id, choice, counter, flags))
    return b64encode(bytes((flags,)) + nonce + sealed)


def open_record(key: bytes | AESGCM, response_id: str, choice: int, counter: int, record: str) -> tuple[int, bytes]:
    """``(flags, plaintext)`` of a record that must be record ``counter`` of ``choice``.

    A record moved to another place, choice or response fails to authenticate.
    """
    try:
        blob = b64decode(record)
    except (ValueError, UnicodeError) as exc:
        raise DecryptionError("protected record is not valid base64") from exc
    if len(blob) < _RECORD_MIN:
        raise DecryptionError("protected record is too short")
    flags = blob[0]
    if flags & ~FLAG_END:
        raise DecryptionError("protected record has unknown flags")
    aad = aad_v2(response_id, choice, counter, flags)
    try:
        plain = _aead(key).decrypt(blob[1 : 1 + NONCE_LENGTH], blob[1 + NONCE_LENGTH :], aad)
    except InvalidTag as exc:
        raise DecryptionError(
            f"record {counter} of choice {choice} failed to authenticate "
            "(tampered, reordered, duplicated, dropped or from another answer)"
        ) from exc
    return flags, plain


def join_records(records: Iterable[str]) -> str:
    """A v2 value from its records."""
    return V2_PREFIX + V2_SEPARATOR.join(records)


def split_records(value: object) -> list[str]:
    """The records of a v2 value, in order (at least one)."""
    if not isinstance(value, str):
        raise DecryptionError(f"protected value must be a string, got {type(value).__name__}")
    if not value.startswith(V2_PREFIX):
        if value.startswith(PIECE_PREFIX):
            raise DecryptionError("a v1 piece in a v2 answer")
        raise NotProtectedError(f"text piece is not output-protected (no {V2_PREFIX!r} prefix)")
    records = value[len(V2_PREFIX) :].split(V2_SEPARATOR)
    if not all(records):
        raise DecryptionError("protected value has an empty record")
    return records


def end_choices(plaintext: bytes) -> int:
    """The number of choices an end marker announces."""
    if len(plaintext) != 4:
        raise DecryptionError("end marker is malformed")
    choices = int.from_bytes(plaintext, "big")
    if choices < 1:
        raise DecryptionError("end marker announces no choices")
    return choices


def text_of(plaintext: bytes) -> str:
    """The text of a content record."""
    return _text(plaintext)


# ---- versions -----------------------------------------------------------------------------------
def format_versions(versions: Iterable[int] = SUPPORTED_VERSIONS) -> str:
    """The value of ``x-sgop-versions`` for these versions, e.g. ``"2,1"``."""
    return ",".join(str(v) for v in versions)


def parse_versions(value: str | None) -> tuple[int, ...]:
    """The versions a requester offers; no header (or an empty one) means version 1 only.

    Unknown versions are kept (the server ignores them); a malformed list is a
    :class:`VersionError`.
    """
    if value is None or not value.strip():
        return (1,)
    out: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not item.isascii() or not item.isdigit() or not 1 <= int(item) <= _MAX_VERSION:
            raise VersionError(f"{VERSIONS_HEADER} must be a comma-separated list of versions such as '2,1'")
        out.append(int(item))
    return tuple(out)


def negotiate(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version both sides speak (a :class:`VersionError` if none)."""
    common = set(offered) & set(supported)
    if not common:
        raise VersionError(
            f"no common output-protection version: offered {format_versions(sorted(set(offered), reverse=True))}, "
            f"this side speaks {format_versions(supported)}"
        )
    return max(common)


def answered_version(headers: Mapping[str, str] | None, accepted: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The version a response is in (``x-sgop-version``, absent means 1), if the requester accepts it."""
    value = header(headers, VERSION_HEADER)
    value = "1" if value is None or not value.strip() else value.strip()
    accepted = tuple(accepted)
    if not value.isascii() or not value.isdigit() or int(value) not in accepted:
        raise VersionError(
            f"the answer is in output-protection version {value[:8]!r}; this side accepts {format_versions(accepted)}"
        )
    return int(value)


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value from any mapping, case-insensitively (dicts, httpx, requests, werkzeug)."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value
