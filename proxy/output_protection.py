"""Stained Glass Output Protection, protocol v1: keys, key ring, encrypt, decrypt.

The inference server encrypts every generated text piece to a key that only the
requester can derive, so the text is unreadable to anything in between. This
module is both sides of that contract and the public client helper:

* a requester makes a :class:`KeyPair` and sends ``kp.public_header`` as the
  ``x-client-public-key`` request header;
* a protected server calls :func:`server_session` once per response, returns
  ``session.public_header`` as ``x-server-public-key`` and encrypts pieces;
* the requester calls :func:`decrypt_response` / :func:`decrypt_stream` (or a
  :class:`ClientSession`) to get plain OpenAI output back.

Protocol v1 (see docs/output-protection.md, pinned by a known-answer test)::

    key   = HKDF-SHA256(ikm=X25519(server_eph, client_pub), salt=b"",
                        info=b"sgop-v1" + client_pub_raw + server_pub_raw, length=32)
    piece = "sgop1:" + b64(nonce12 || AESGCM(key).encrypt(nonce12, text_utf8, response_id_utf8))

Pure library: no Flask, no imports from the rest of ``proxy``. Key material is
never logged or shown in a ``repr``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CLIENT_PUBLIC_KEY_HEADER",
    "HKDF_INFO_PREFIX",
    "KEY_LENGTH",
    "NONCE_LENGTH",
    "PIECE_PREFIX",
    "PROTOCOL_VERSION",
    "PUBLIC_KEY_LENGTH",
    "SERVER_PUBLIC_KEY_HEADER",
    "ClientSession",
    "DecryptionError",
    "InvalidPublicKeyError",
    "KeyPair",
    "KeyRing",
    "NotProtectedError",
    "OutputProtectionError",
    "ServerSession",
    "client_session",
    "decode_public_key",
    "decrypt_chunk",
    "decrypt_piece",
    "decrypt_response",
    "decrypt_stream",
    "derive_key",
    "encrypt_piece",
    "is_protected_piece",
    "server_session",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CLIENT_PUBLIC_KEY_HEADER = "x-client-public-key"
SERVER_PUBLIC_KEY_HEADER = "x-server-public-key"
PIECE_PREFIX = "sgop1:"
HKDF_INFO_PREFIX = b"sgop-v1"
PUBLIC_KEY_LENGTH = 32
KEY_LENGTH = 32
NONCE_LENGTH = 12
_TAG_LENGTH = 16


# --------------------------------------------------------------------------- errors


class OutputProtectionError(Exception):
    """Base of every output-protection failure, so callers can catch one type."""


class NotProtectedError(OutputProtectionError):
    """The response is not output-protected where protection was required.

    Raised when the ``x-server-public-key`` header is missing or a text piece
    lacks the ``sgop1:`` prefix: the upstream is not a protected server.
    """


class DecryptionError(OutputProtectionError):
    """A protected piece is malformed or fails to authenticate (tampered, wrong key or id)."""


class InvalidPublicKeyError(OutputProtectionError):
    """A public-key header value is not base64 of 32 raw X25519 bytes (or is unusable)."""


# --------------------------------------------------------------------------- base64 / keys


def _b64encode(data: bytes) -> str:
    return pybase64.b64encode_as_string(data)


def _b64decode(value: str) -> bytes:
    """Strict standard-alphabet, padded base64 decoding (raises ValueError)."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="strict")
    return pybase64.b64decode(value, validate=True)


def _fingerprint(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:12]


def decode_public_key(value: str | bytes | None, *, header: str = "public key") -> bytes:
    """Return the 32 raw bytes of a public key sent on the wire as base64.

    Raises :class:`InvalidPublicKeyError` naming ``header`` (never echoing the
    value) so that a bad header becomes a clear client error.
    """
    if value is None:
        raise InvalidPublicKeyError(f"{header} is missing")
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        raw = _b64decode(text.strip())
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise InvalidPublicKeyError(f"{header} is not valid base64") from exc
    if len(raw) != PUBLIC_KEY_LENGTH:
        raise InvalidPublicKeyError(
            f"{header} must be base64 of {PUBLIC_KEY_LENGTH} raw X25519 bytes, got {len(raw)} bytes"
        )
    return raw


class KeyPair:
    """An X25519 key pair; ``public_header`` is what goes into a key header.

    The private key is kept out of ``repr``/``str`` so that logging a key pair
    never leaks it; only a short fingerprint of the public key is shown.
    """

    __slots__ = ("_private_key", "public_header", "public_raw")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes_raw()
        self.public_header: str = _b64encode(self.public_raw)

    @classmethod
    def generate(cls) -> KeyPair:
        """Make a fresh random key pair."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from 32 raw private bytes (tests, persisted client keys)."""
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @property
    def private_key(self) -> X25519PrivateKey:
        """The private key object (handle with care: never log it)."""
        return self._private_key

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 fingerprint of the public key, safe to log."""
        return _fingerprint(self.public_raw)

    def __repr__(self) -> str:
        return f"KeyPair(public_fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __copy__(self) -> KeyPair:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> KeyPair:
        return self

    def __reduce__(self) -> Any:
        # Pickling would copy the private key around (e.g. into a log or a queue).
        raise TypeError("KeyPair cannot be pickled")


def derive_key(
    private_key: X25519PrivateKey,
    peer_public_raw: bytes,
    client_public_raw: bytes,
    server_public_raw: bytes,
    *,
    peer_header: str = "peer public key",
) -> bytes:
    """Derive the 32-byte AES-256-GCM key shared by client and server (both sides).

    ``key = HKDF-SHA256(ikm=X25519(own_private, peer_public), salt=b"",
    info=b"sgop-v1" + client_pub_raw + server_pub_raw, length=32)``. Binding
    both public keys into ``info`` ties the key to exactly this pair.
    """
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
        info=HKDF_INFO_PREFIX + client_public_raw + server_public_raw,
    ).derive(shared)


# --------------------------------------------------------------------------- pieces


def is_protected_piece(value: object) -> bool:
    """True if ``value`` looks like a v1 protected piece (a string with the prefix)."""
    return isinstance(value, str) and value.startswith(PIECE_PREFIX)


def encrypt_piece(key: bytes, response_id: str, text: str, nonce: bytes | None = None) -> str:
    """Encrypt one text piece; ``nonce`` is random unless injected (known-answer tests only)."""
    if nonce is None:
        nonce = os.urandom(NONCE_LENGTH)
    elif len(nonce) != NONCE_LENGTH:
        raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
    sealed = AESGCM(key).encrypt(nonce, text.encode("utf-8"), response_id.encode("utf-8"))
    return PIECE_PREFIX + _b64encode(nonce + sealed)


def decrypt_piece(key: bytes, response_id: str, piece: object) -> str:
    """Decrypt one protected piece; the response id is the associated data.

    Raises :class:`NotProtectedError` if ``piece`` lacks the ``sgop1:`` prefix and
    :class:`DecryptionError` if it is malformed or fails to authenticate.
    """
    if not isinstance(piece, str):
        raise DecryptionError(f"protected piece must be a string, got {type(piece).__name__}")
    if not piece.startswith(PIECE_PREFIX):
        raise NotProtectedError("text piece is not output-protected (no 'sgop1:' prefix)")
    if not isinstance(response_id, str):
        raise DecryptionError("response has no string 'id' (the associated data)")
    try:
        blob = _b64decode(piece[len(PIECE_PREFIX) :])
    except (ValueError, UnicodeError) as exc:
        raise DecryptionError("protected piece is not valid base64") from exc
    if len(blob) < NONCE_LENGTH + _TAG_LENGTH:
        raise DecryptionError("protected piece is too short")
    nonce, sealed = blob[:NONCE_LENGTH], blob[NONCE_LENGTH:]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, response_id.encode("utf-8"))
    except InvalidTag as exc:
        raise DecryptionError("protected piece failed to authenticate") from exc
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptionError("protected piece is not UTF-8 text") from exc


# --------------------------------------------------------------------------- piece locations
#
# Which fields are pieces (one place, used by both directions):
#   completions, whole and streamed: choices[i].text
#   chat, whole:                     choices[i].message.content  (when a string)
#   chat, streamed:                  choices[i].delta.content    (when present and not null)
# Everything else (ids, roles, finish_reason, usage, tool_calls, logprobs) is left alone.


def _piece_slots(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield ``(container, field)`` for every text piece of a response or chunk."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if "text" in choice and choice["text"] is not None:
            yield choice, "text"
        for holder in ("message", "delta"):
            inner = choice.get(holder)
            if isinstance(inner, dict) and inner.get("content") is not None:
                if isinstance(inner["content"], list):
                    continue  # multi-part content is not generated text; v1 leaves it alone
                yield inner, "content"


def _transform(body: dict[str, Any], fn: Any, missing_id: type[Exception] = DecryptionError) -> dict[str, Any]:
    """Deep-copy ``body`` and apply ``fn(response_id, value)`` to every piece."""
    out = copy.deepcopy(body)
    slots = list(_piece_slots(out))
    if not slots:
        return out
    rid = out.get("id")
    if not isinstance(rid, str):
        raise missing_id("response has no string 'id' (the associated data)")
    for container, field in slots:
        container[field] = fn(rid, container[field])
    return out


# --------------------------------------------------------------------------- sessions


class ServerSession:
    """One response's encryption state on a protected server (ephemeral key pair)."""

    __slots__ = ("_key", "client_public_raw", "public_header", "server_public_raw")

    def __init__(self, client_public_b64: str | bytes | None) -> None:
        self.client_public_raw = decode_public_key(client_public_b64, header=CLIENT_PUBLIC_KEY_HEADER)
        eph = KeyPair.generate()
        self.server_public_raw = eph.public_raw
        self.public_header: str = eph.public_header
        self._key = derive_key(
            eph.private_key,
            self.client_public_raw,
            self.client_public_raw,
            eph.public_raw,
            peer_header=CLIENT_PUBLIC_KEY_HEADER,
        )

    def encrypt_piece(self, response_id: str, text: str) -> str:
        """Encrypt one generated text piece of this response."""
        return encrypt_piece(self._key, response_id, text)

    def encrypt_response(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of a whole response (or one stream chunk) with its pieces encrypted."""
        return _transform(body, lambda rid, text: encrypt_piece(self._key, rid, str(text)), ValueError)

    encrypt_chunk = encrypt_response

    def __repr__(self) -> str:
        return f"ServerSession(server_public_fingerprint={_fingerprint(self.server_public_raw)!r})"


class ClientSession:
    """Decryption state for one protected response (requester side)."""

    __slots__ = ("_key", "client_public_raw", "server_public_raw")

    def __init__(self, keypair: KeyPair, server_public_b64: str | bytes | None) -> None:
        if server_public_b64 is None or (isinstance(server_public_b64, (str, bytes)) and not server_public_b64.strip()):
            raise NotProtectedError(
                f"response carries no {SERVER_PUBLIC_KEY_HEADER} header: the inference service is not output-protected"
            )
        self.server_public_raw = decode_public_key(server_public_b64, header=SERVER_PUBLIC_KEY_HEADER)
        self.client_public_raw = keypair.public_raw
        self._key = derive_key(
            keypair.private_key,
            self.server_public_raw,
            keypair.public_raw,
            self.server_public_raw,
            peer_header=SERVER_PUBLIC_KEY_HEADER,
        )

    def decrypt_piece(self, response_id: str, piece: object) -> str:
        """Decrypt one piece of this response."""
        return decrypt_piece(self._key, response_id, piece)

    def decrypt_response(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of a whole completions/chat response with plain text."""
        return _transform(body, lambda rid, piece: decrypt_piece(self._key, rid, piece))

    def decrypt_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of one parsed SSE chunk with plain text (chunks without pieces pass)."""
        return self.decrypt_response(chunk)

    def decrypt_stream(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Lazily decrypt parsed SSE chunks; raises at the first bad chunk."""
        for event in events:
            yield self.decrypt_chunk(event)

    def __repr__(self) -> str:
        return f"ClientSession(server_public_fingerprint={_fingerprint(self.server_public_raw)!r})"


def server_session(client_public_b64: str | bytes | None) -> ServerSession:
    """Start encrypting one response to the requester's ``x-client-public-key``."""
    return ServerSession(client_public_b64)


def client_session(keypair: KeyPair, server_public_b64: str | bytes | None) -> ClientSession:
    """Start decrypting one response given the ``x-server-public-key`` header value.

    Raises :class:`NotProtectedError` if the header is absent/empty and
    :class:`InvalidPublicKeyError` if it is garbled.
    """
    return ClientSession(keypair, server_public_b64)


def decrypt_response(keypair: KeyPair, server_public_b64: str | bytes | None, body: dict[str, Any]) -> dict[str, Any]:
    """Decrypt a whole completions (``choices[i].text``) or chat (``message.content``) response."""
    return client_session(keypair, server_public_b64).decrypt_response(body)


def decrypt_chunk(keypair: KeyPair, server_public_b64: str | bytes | None, chunk: dict[str, Any]) -> dict[str, Any]:
    """Decrypt one parsed stream chunk (prefer a :class:`ClientSession` for many chunks)."""
    return client_session(keypair, server_public_b64).decrypt_chunk(chunk)


def decrypt_stream(
    keypair: KeyPair,
    server_public_b64: str | bytes | None,
    events: Iterable[dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    """Decrypt parsed SSE chunk dicts (completions ``text``, chat ``delta.content``) lazily.

    The header is checked at once (before the first chunk is pulled), so a
    missing or garbled server key fails before any output is produced.
    """
    return client_session(keypair, server_public_b64).decrypt_stream(events)


# --------------------------------------------------------------------------- key ring


class KeyRing:
    """The proxy's current key pair, refreshed periodically without breaking requests.

    A request calls :meth:`current` once and keeps that :class:`KeyPair` for its
    whole life; :meth:`refresh` only swaps the ring's reference, so a request in
    flight still decrypts with the key it sent upstream.
    """

    def __init__(self, keypair: KeyPair | None = None) -> None:
        self._lock = threading.Lock()
        self._current = keypair or KeyPair.generate()
        self._refresh_count = 0
        self._scheduler: Any = None

    def current(self) -> KeyPair:
        """The key pair to use for a new request."""
        with self._lock:
            return self._current

    @property
    def refresh_count(self) -> int:
        """How many times :meth:`refresh` has swapped in a new pair."""
        with self._lock:
            return self._refresh_count

    def refresh(self) -> KeyPair:
        """Generate a new pair and swap it in atomically; return it."""
        new = KeyPair.generate()  # slow part outside the lock
        with self._lock:
            self._current = new
            self._refresh_count += 1
            count = self._refresh_count
        logger.debug("output-protection key refreshed (#%d, %s)", count, new.fingerprint)
        return new

    def _scheduled_refresh(self) -> None:
        try:
            self.refresh()
        except Exception:  # a failed refresh keeps the old key; never kill the scheduler
            logger.exception("output-protection key refresh failed; keeping the current key")

    def start_refresh(self, interval_seconds: float) -> Any:
        """Start a daemon APScheduler ``BackgroundScheduler`` refreshing every interval.

        Call it in each process that serves requests (e.g. each gunicorn worker
        after fork): scheduler threads do not survive ``fork``.
        """
        from apscheduler.schedulers.background import BackgroundScheduler

        if not interval_seconds or interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        with self._lock:
            if self._scheduler is not None:
                raise RuntimeError("key refresh is already running")
            scheduler = BackgroundScheduler(daemon=True)
            scheduler.add_job(
                self._scheduled_refresh,
                "interval",
                seconds=interval_seconds,
                id="sgop-key-refresh",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            scheduler.start()
            self._scheduler = scheduler
        return scheduler

    def stop(self) -> None:
        """Stop the refresh scheduler (idempotent; does not wait for a running job)."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        """Whether a refresh scheduler is active."""
        with self._lock:
            return self._scheduler is not None

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current()!r}, refreshes={self.refresh_count})"
