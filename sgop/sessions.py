"""One response's protection state: the server's encryption and the requester's decryption.

Where the text values are (one place, used by both directions):

* completions, whole and streamed: ``choices[i].text``
* chat, whole: ``choices[i].message.content`` (when not null and not a list of parts)
* chat, streamed: ``choices[i].delta.content`` (when present and not null)

Everything else (ids, roles, ``finish_reason``, usage, tool calls) is left
alone. In version 2 a choice's end marker rides in the value of the event
that ends the choice (its ``finish_reason`` is set, or the answer is whole); a
chat choice that ends without content gets a ``content`` holding the end
marker alone, which decrypts to ``""``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sgop.keys import KeyPair, fingerprint
from sgop.protocol import (
    CLIENT_PUBLIC_KEY_HEADER,
    FLAG_END,
    SERVER_PUBLIC_KEY_HEADER,
    VERSION_HEADER,
    DecryptionError,
    NotProtectedError,
    TruncatedError,
    decode_public_key,
    decrypt_piece,
    derive_key,
    encrypt_piece,
    end_choices,
    end_plaintext,
    join_records,
    open_record,
    seal_record,
    split_records,
    text_of,
)

Slot = tuple[int, dict[str, Any], str]
"""``(choice index, container, field)`` of one text value."""


def _index(choice: dict[str, Any], error: type[Exception]) -> int:
    index: object = choice.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
        raise error("a choice has no valid 'index'")
    return index


def _slot(choice: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """Where a choice's text value is, if it has one."""
    if choice.get("text") is not None:
        return choice, "text"
    for holder in ("message", "delta"):
        inner = choice.get(holder)
        if isinstance(inner, dict) and inner.get("content") is not None and not isinstance(inner["content"], list):
            return inner, "content"  # multi-part content is not generated text
    return None


def _slots(body: dict[str, Any], error: type[Exception]) -> list[Slot]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return []
    out = []
    for choice in choices:
        if isinstance(choice, dict) and (slot := _slot(choice)) is not None:
            out.append((_index(choice, error), *slot))
    return out


def _response_id(body: dict[str, Any], error: type[Exception]) -> str:
    rid = body.get("id")
    if not isinstance(rid, str):
        raise error("response has no string 'id' (the associated data)")
    return rid


class ServerSession:
    """One response's encryption on a protected server: an ephemeral key pair, per-choice counters.

    ``choices`` is how many choices the response has (v2 end markers announce it).
    """

    __slots__ = (
        "_aead",
        "_counters",
        "_ended",
        "choices",
        "client_public_raw",
        "public_header",
        "server_public_raw",
        "version",
    )

    def __init__(self, client_public_b64: str | bytes | None, version: int = 1, choices: int = 1) -> None:
        self.client_public_raw = decode_public_key(client_public_b64, header=CLIENT_PUBLIC_KEY_HEADER)
        eph = KeyPair.generate()
        self.server_public_raw = eph.public_raw
        self.public_header: str = eph.public_header
        self.version = version
        self.choices = choices
        key = derive_key(
            eph.private_key,
            self.client_public_raw,
            self.client_public_raw,
            eph.public_raw,
            peer_header=CLIENT_PUBLIC_KEY_HEADER,
            version=version,
        )
        self._aead = AESGCM(key)
        self._counters: dict[int, int] = {}
        self._ended: set[int] = set()

    @property
    def headers(self) -> dict[str, str]:
        """The response headers that tell the requester how to decrypt."""
        return {SERVER_PUBLIC_KEY_HEADER: self.public_header, VERSION_HEADER: str(self.version)}

    def encrypt_piece(self, response_id: str, text: str, index: int = 0, last: bool = False) -> str:
        """The wire value of one generated piece of choice ``index``; ``last`` ends the choice (v2).

        In v1 ``index`` and ``last`` are ignored. In v2 the pieces of a choice
        must be passed in order, and nothing may follow its last one.
        """
        if self.version == 1:
            return encrypt_piece(self._aead, response_id, text)
        if index in self._ended or not 0 <= index < self.choices:
            raise ValueError(f"choice {index} has ended or is not one of the {self.choices} choices")
        counter = self._counters.get(index, 0)
        records = [seal_record(self._aead, response_id, index, counter, text.encode("utf-8"))]
        if last:
            end = end_plaintext(self.choices)
            records.append(seal_record(self._aead, response_id, index, counter + 1, end, FLAG_END))
            self._ended.add(index)
        self._counters[index] = counter + len(records)
        return join_records(records)

    def encrypt_response(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of a whole response with its text values encrypted (each choice ends here)."""
        return self._encrypt(body, whole=True)

    def encrypt_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """A copy of one stream chunk with its text values encrypted (a choice ends with its finish_reason)."""
        return self._encrypt(chunk, whole=False)

    def _encrypt(self, body: dict[str, Any], whole: bool) -> dict[str, Any]:
        out = copy.deepcopy(body)
        choices = out.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            last = whole or choice.get("finish_reason") is not None
            slot = _slot(choice)
            if slot is None:
                if self.version == 1 or not last:
                    continue
                if "text" in choice:
                    slot = choice, "text"
                else:
                    slot = choice.setdefault("message" if whole else "delta", {}), "content"
                slot[0][slot[1]] = ""  # the end marker needs a place
            container, field = slot
            rid = _response_id(out, ValueError)
            container[field] = self.encrypt_piece(rid, str(container[field]), _index(choice, ValueError), last)
        return out

    def __repr__(self) -> str:
        server = fingerprint(self.server_public_raw)
        return f"ServerSession(version={self.version}, server_public_fingerprint={server!r})"


class ClientSession:
    """Decryption state for one protected response (requester side).

    For version 2 it checks that every choice's records come in order, once
    each, and end with the end marker: call :meth:`finish` after the last
    event (:meth:`decrypt_response` and :meth:`decrypt_stream` do).
    """

    __slots__ = ("_aead", "_choices", "_ended", "_next", "client_public_raw", "server_public_raw", "version")

    def __init__(self, keypair: KeyPair, server_public_b64: str | bytes | None, version: int = 1) -> None:
        if server_public_b64 is None or (isinstance(server_public_b64, (str, bytes)) and not server_public_b64.strip()):
            raise NotProtectedError(
                f"response carries no {SERVER_PUBLIC_KEY_HEADER} header: the inference service is not output-protected"
            )
        self.server_public_raw = decode_public_key(server_public_b64, header=SERVER_PUBLIC_KEY_HEADER)
        self.client_public_raw = keypair.public_raw
        self.version = version
        key = derive_key(
            keypair.private_key,
            self.server_public_raw,
            keypair.public_raw,
            self.server_public_raw,
            peer_header=SERVER_PUBLIC_KEY_HEADER,
            version=version,
        )
        self._aead = AESGCM(key)
        self._next: dict[int, int] = {}
        self._ended: set[int] = set()
        self._choices: int | None = None

    def decrypt_piece(self, response_id: str, value: object, index: int = 0) -> str:
        """The text of one wire value of choice ``index`` (v2: the next one of that choice)."""
        if self.version == 1:
            return decrypt_piece(self._aead, response_id, value)
        if not isinstance(response_id, str):
            raise DecryptionError("response has no string 'id' (the associated data)")
        parts = []
        for record in split_records(value):
            if index in self._ended:
                raise TruncatedError(f"choice {index} has a piece after its end marker")
            counter = self._next.get(index, 0)
            flags, plain = open_record(self._aead, response_id, index, counter, record)
            self._next[index] = counter + 1
            if flags & FLAG_END:
                self._end(index, end_choices(plain))
            else:
                parts.append(text_of(plain))
        return "".join(parts)

    def _end(self, index: int, choices: int) -> None:
        if self._choices is not None and choices != self._choices:
            raise DecryptionError("end markers disagree on the number of choices")
        if index >= choices:
            raise DecryptionError(f"choice {index} is not one of the {choices} choices")
        self._choices = choices
        self._ended.add(index)

    def finish(self) -> None:
        """Check that the answer is complete (v2): every choice ended, none is missing."""
        if self.version == 1:
            return
        if self._choices is None:
            raise TruncatedError("the answer ended without an end marker: it was cut short")
        missing = [i for i in range(self._choices) if i not in self._ended]
        extra = [i for i in self._next if i >= self._choices]
        if missing or extra:
            raise TruncatedError(
                f"the answer is incomplete: choice(s) {', '.join(map(str, missing or extra))} "
                f"of {self._choices} did not end or do not belong"
            )

    def open_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Decrypt one event's text values in place and return it (the proxy's path: no copy)."""
        slots = _slots(event, DecryptionError)
        if slots:
            rid = _response_id(event, DecryptionError)
            for index, container, field in slots:
                container[field] = self.decrypt_piece(rid, container[field], index)
        return event

    def decrypt_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """A copy of one parsed stream chunk with plain text (chunks without text values pass)."""
        return self.open_event(copy.deepcopy(chunk))

    def decrypt_response(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of a whole completions/chat response with plain text; checks it is complete."""
        out = self.decrypt_chunk(body)
        self.finish()
        return out

    def decrypt_stream(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Lazily decrypt parsed SSE chunks; raises at the first bad chunk, or at the end if truncated."""
        for event in events:
            yield self.decrypt_chunk(event)
        self.finish()

    def __repr__(self) -> str:
        server = fingerprint(self.server_public_raw)
        return f"ClientSession(version={self.version}, server_public_fingerprint={server!r})"
