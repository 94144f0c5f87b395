"""Output protection protocol v2 (sgop): known answers, negotiation, and every tamper case.

v2 binds each record to the response id, its choice and its place, and ends
every choice with an authenticated end marker that announces how many choices
the answer has. These tests pin the bytes (docs/output-protection.md) and show
that reordering, duplicating, dropping, truncating and swapping across choices
are each detected, whole and streamed.
"""

from __future__ import annotations

import base64
import copy
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import sgop
from sgop import (
    DecryptionError,
    KeyPair,
    KeyRing,
    NotProtectedError,
    TruncatedError,
    VersionError,
)
from sgop import protocol as P

# --------------------------------------------------------------------------- known answer

KAT_CLIENT_PRIVATE = bytes(range(1, 33))
KAT_SERVER_PRIVATE = bytes(range(33, 65))
KAT_NONCE = bytes(range(0xA0, 0xAC))
KAT_END_NONCE = bytes(range(0xB0, 0xBC))
KAT_RESPONSE_ID = "cmpl-kat-0001"
KAT_TEXT = "Héllo, wörld! 👋"
KAT_SERVER_HEADER = "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns="
KAT_V2_KEY_HEX = "ea41b8b793b8b30c3d901fb90af493e5f612b4da792229243dd3ce6d7c28e641"
KAT_AAD_0_0_0 = "73676f702d76320000000d636d706c2d6b61742d3030303100000000000000000000000000"
KAT_AAD_1_3_END = "73676f702d76320000000d636d706c2d6b61742d3030303100000001000000000000000301"
KAT_VALUE = (
    "sgop2:AKChoqOkpaanqKmqq7J7PPzkhAvJbc8Tqvk5zuMyCvJcxUHgUPhYeTUjV0Mx1HSt7Q=="
    ".AbCxsrO0tba3uLm6u7Cdq9V1lBB3Z00x8gtKifvaUeo8"
)


def test_known_answer_module() -> None:
    client = KeyPair.from_private_bytes(KAT_CLIENT_PRIVATE)
    server = KeyPair.from_private_bytes(KAT_SERVER_PRIVATE)
    key = P.derive_key(server.private_key, client.public_raw, client.public_raw, server.public_raw, version=2)
    assert key.hex() == KAT_V2_KEY_HEX
    assert P.derive_key(client.private_key, server.public_raw, client.public_raw, server.public_raw, version=2) == key
    assert P.derive_key(client.private_key, server.public_raw, client.public_raw, server.public_raw) != key  # v1
    assert P.aad_v2(KAT_RESPONSE_ID, 0, 0, 0).hex() == KAT_AAD_0_0_0
    assert P.aad_v2(KAT_RESPONSE_ID, 1, 3, P.FLAG_END).hex() == KAT_AAD_1_3_END
    text_record = P.seal_record(key, KAT_RESPONSE_ID, 0, 0, KAT_TEXT.encode(), 0, KAT_NONCE)
    end_record = P.seal_record(key, KAT_RESPONSE_ID, 0, 1, P.end_plaintext(1), P.FLAG_END, KAT_END_NONCE)
    assert P.join_records([text_record, end_record]) == KAT_VALUE

    body = {"id": KAT_RESPONSE_ID, "choices": [{"index": 0, "text": KAT_VALUE, "finish_reason": "length"}]}
    headers = {"X-Server-Public-Key": KAT_SERVER_HEADER, "x-sgop-version": "2"}  # any header case
    plain = sgop.decrypt_response(client, headers, body)
    assert plain["choices"][0]["text"] == KAT_TEXT


def test_known_answer_independent_derivation() -> None:
    """Redo v2 from the documented layout with raw cryptography, struct and base64 only."""
    client_priv = X25519PrivateKey.from_private_bytes(KAT_CLIENT_PRIVATE)
    server_priv = X25519PrivateKey.from_private_bytes(KAT_SERVER_PRIVATE)
    client_pub = client_priv.public_key().public_bytes_raw()
    server_pub = server_priv.public_key().public_bytes_raw()
    shared = server_priv.exchange(X25519PublicKey.from_public_bytes(client_pub))
    key = HKDF(hashes.SHA256(), 32, salt=b"", info=b"sgop-v2" + client_pub + server_pub).derive(shared)
    assert key.hex() == KAT_V2_KEY_HEX

    rid = KAT_RESPONSE_ID.encode()

    def aad(choice: int, counter: int, flags: int) -> bytes:
        return (
            b"sgop-v2"
            + struct.pack(">I", len(rid))
            + rid
            + struct.pack(">I", choice)
            + struct.pack(">Q", counter)
            + bytes([flags])
        )

    assert aad(0, 0, 0).hex() == KAT_AAD_0_0_0
    assert aad(1, 3, 1).hex() == KAT_AAD_1_3_END
    assert len(aad(0, 0, 0)) == 7 + 4 + len(rid) + 4 + 8 + 1

    records = KAT_VALUE.removeprefix("sgop2:").split(".")
    assert len(records) == 2
    blobs = [base64.b64decode(r, validate=True) for r in records]
    # record: flags(1) || nonce(12) || ciphertext || tag(16)
    assert blobs[0][0] == 0 and blobs[0][1:13] == KAT_NONCE
    assert blobs[1][0] == 1 and blobs[1][1:13] == KAT_END_NONCE
    text = AESGCM(key).decrypt(blobs[0][1:13], blobs[0][13:], aad(0, 0, 0))
    assert text.decode() == KAT_TEXT
    end = AESGCM(key).decrypt(blobs[1][1:13], blobs[1][13:], aad(0, 1, 1))
    assert end == struct.pack(">I", 1)  # the end marker announces one choice
    expected = AESGCM(key).encrypt(KAT_NONCE, KAT_TEXT.encode(), aad(0, 0, 0))
    assert base64.b64encode(b"\x00" + KAT_NONCE + expected).decode() == records[0]


# --------------------------------------------------------------------------- helpers


def _pair(choices: int = 1) -> tuple[KeyPair, sgop.ServerSession]:
    client = KeyPair.generate()
    return client, sgop.server_session(client.public_header, version=2, choices=choices)


def _headers(server: sgop.ServerSession) -> dict[str, str]:
    return server.headers


def _stream(
    choices: int = 2, pieces: tuple[str, ...] = ("Hel", "", "lo ", "wörld 🌍")
) -> tuple[KeyPair, dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """A protected completions stream of ``choices`` interleaved choices (plain chunks too)."""
    client, server = _pair(choices)
    plain: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        for i in range(choices):
            last = k == len(pieces) - 1
            plain.append(
                {
                    "id": "cmpl-s",
                    "object": "text_completion",
                    "choices": [{"index": i, "text": f"{i}:{piece}", "finish_reason": "stop" if last else None}],
                }
            )
    plain.append({"id": "cmpl-s", "object": "text_completion", "choices": [], "usage": {"total_tokens": 9}})
    return client, _headers(server), [server.encrypt_chunk(c) for c in plain], plain


def _decrypt_all(client: KeyPair, headers: dict[str, str], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(sgop.decrypt_stream(client, headers, events))


def _whole(
    choices: int = 2, pieces: tuple[str, ...] = ("one ", "two ", "three")
) -> tuple[KeyPair, dict[str, str], dict[str, Any]]:
    """A whole answer whose choices each carry several records (as an answer assembled from pieces may)."""
    client, server = _pair(choices)
    out = []
    for i in range(choices):
        records: list[str] = []
        for k, piece in enumerate(pieces):
            value = server.encrypt_piece("cmpl-w", f"{i}:{piece}", index=i, last=k == len(pieces) - 1)
            records += P.split_records(value)
        out.append({"index": i, "text": P.join_records(records), "finish_reason": "stop"})
    return client, _headers(server), {"id": "cmpl-w", "object": "text_completion", "choices": out}


# --------------------------------------------------------------------------- round trips


def test_whole_round_trip_several_records_and_choices() -> None:
    client, headers, body = _whole()
    plain = sgop.decrypt_response(client, headers, body)
    assert [c["text"] for c in plain["choices"]] == ["0:one 0:two 0:three", "1:one 1:two 1:three"]
    assert body["choices"][0]["text"].startswith("sgop2:")  # a copy: the input is untouched


def test_encrypt_response_round_trip_chat_and_completion() -> None:
    client, server = _pair(2)
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Grüße 🌍"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"},
        ],
    }
    protected = server.encrypt_response(chat)
    assert protected["choices"][1]["message"]["content"].startswith("sgop2:")  # the end marker needs a place
    plain = sgop.decrypt_response(client, server.headers, protected)
    assert plain["choices"][0]["message"]["content"] == "Grüße 🌍"
    assert plain["choices"][1]["message"]["content"] == ""  # documented: a null content ends as ""


@pytest.mark.parametrize("choices", [1, 3])
def test_stream_round_trip(choices: int) -> None:
    client, headers, events, plain = _stream(choices)
    for event in events[:-1]:
        assert event["choices"][0]["text"].startswith("sgop2:")
    assert _decrypt_all(client, headers, events) == plain


def test_chat_stream_finish_chunk_without_content_carries_the_end() -> None:
    client, server = _pair(1)
    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    protected = [server.encrypt_chunk(c) for c in chunks]
    assert protected[0] == chunks[0]  # the role chunk has no text
    assert protected[2]["choices"][0]["delta"]["content"].startswith("sgop2:")
    out = _decrypt_all(client, server.headers, protected)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == "hi"


def test_session_is_ephemeral_and_records_random() -> None:
    client, a = _pair()
    b = sgop.server_session(client.public_header, version=2)
    assert a.public_header != b.public_header
    assert a.encrypt_piece("r", "same") != b.encrypt_piece("r", "same")


def test_server_refuses_pieces_after_the_end_or_beyond_the_choices() -> None:
    _, server = _pair(2)
    server.encrypt_piece("r", "x", index=0, last=True)
    with pytest.raises(ValueError, match="ended"):
        server.encrypt_piece("r", "y", index=0)
    with pytest.raises(ValueError):
        server.encrypt_piece("r", "y", index=2)


# --------------------------------------------------------------------------- tampering, streamed


def _swap(events: list[dict[str, Any]], a: int, b: int) -> list[dict[str, Any]]:
    out = list(events)
    out[a], out[b] = out[b], out[a]
    return out


STREAM_TAMPERS: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], type[Exception]]] = {
    # events: choice 0 and 1 interleaved, four pieces each, then usage: [0a 1a 0b 1b 0c 1c 0d 1d usage]
    "reorder": (lambda e: _swap(e, 0, 2), DecryptionError),
    "duplicate": (lambda e: [*e[:3], e[2], *e[3:]], DecryptionError),
    "drop": (lambda e: e[:2] + e[3:], DecryptionError),
    "truncate": (lambda e: e[:6], TruncatedError),
    "truncate_one_choice": (lambda e: e[:7] + e[8:], TruncatedError),
    "drop_a_whole_choice": (
        lambda e: [x for x in e if not x["choices"] or x["choices"][0]["index"] == 0],
        TruncatedError,
    ),
    "replay_after_end": (lambda e: [*e[:8], e[6], e[8]], TruncatedError),
}


@pytest.mark.parametrize("case", sorted(STREAM_TAMPERS))
def test_stream_tamper_is_detected(case: str) -> None:
    client, headers, events, _ = _stream(2)
    tamper, error = STREAM_TAMPERS[case]
    with pytest.raises(error):
        _decrypt_all(client, headers, copy.deepcopy(tamper(events)))


def test_stream_cross_choice_swap_is_detected() -> None:
    client, headers, events, _ = _stream(2)
    events = copy.deepcopy(events)
    events[0]["choices"][0]["text"], events[1]["choices"][0]["text"] = (
        events[1]["choices"][0]["text"],
        events[0]["choices"][0]["text"],
    )
    with pytest.raises(DecryptionError):
        _decrypt_all(client, headers, events)


def test_stream_with_relabelled_index_is_detected() -> None:
    client, headers, events, _ = _stream(2)
    events = copy.deepcopy(events)
    events[1]["choices"][0]["index"] = 0
    with pytest.raises(DecryptionError):
        _decrypt_all(client, headers, events)


def test_stream_from_another_response_is_detected() -> None:
    client, headers, events, _ = _stream(1)
    events = copy.deepcopy(events)
    events[1]["id"] = "cmpl-other"
    with pytest.raises(DecryptionError):
        _decrypt_all(client, headers, events)


def test_stream_fails_lazily_at_the_bad_chunk() -> None:
    client, headers, events, _ = _stream(1)
    it = sgop.decrypt_stream(client, headers, _swap(events, 1, 2))
    assert next(it)["choices"][0]["text"] == "0:Hel"
    with pytest.raises(DecryptionError, match="record 1 of choice 0"):
        next(it)


# --------------------------------------------------------------------------- tampering, whole


def _records(body: dict[str, Any], i: int) -> list[str]:
    return P.split_records(body["choices"][i]["text"])


def _set(body: dict[str, Any], i: int, records: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["choices"][i]["text"] = P.join_records(records)
    return out


WHOLE_TAMPERS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], type[Exception]]] = {
    # choice 0 holds records [one, two, three, end]
    "reorder": (lambda b: _set(b, 0, [_records(b, 0)[i] for i in (1, 0, 2, 3)]), DecryptionError),
    "duplicate": (lambda b: _set(b, 0, [_records(b, 0)[i] for i in (0, 0, 1, 2, 3)]), DecryptionError),
    "drop": (lambda b: _set(b, 0, [_records(b, 0)[i] for i in (0, 2, 3)]), DecryptionError),
    "truncate": (lambda b: _set(b, 0, _records(b, 0)[:3]), TruncatedError),
    "truncate_to_nothing_but_end": (lambda b: _set(b, 0, _records(b, 0)[3:]), DecryptionError),
    "extra_after_end": (lambda b: _set(b, 0, [*_records(b, 0), _records(b, 0)[0]]), TruncatedError),
    "drop_a_choice": (lambda b: {**b, "choices": b["choices"][:1]}, TruncatedError),
    "duplicate_a_choice": (lambda b: {**b, "choices": [dict(b["choices"][0]), *b["choices"]]}, TruncatedError),
    "cross_choice_swap": (
        lambda b: {**b, "choices": [{**b["choices"][0], "text": b["choices"][1]["text"]}, b["choices"][1]]},
        DecryptionError,
    ),
    "cross_choice_record": (lambda b: _set(b, 0, [_records(b, 1)[0], *_records(b, 0)[1:]]), DecryptionError),
    "other_response_id": (lambda b: {**b, "id": "cmpl-x"}, DecryptionError),
    "flag_flipped": (
        lambda b: _set(b, 0, [*_records(b, 0)[:3], _flip_flag(_records(b, 0)[3])]),
        DecryptionError,
    ),
    "v1_piece_inside": (
        lambda b: {**b, "choices": [{**b["choices"][0], "text": "sgop1:AAAA"}, b["choices"][1]]},
        DecryptionError,
    ),
    "plain_text": (
        lambda b: {**b, "choices": [{**b["choices"][0], "text": "in clear"}, b["choices"][1]]},
        NotProtectedError,
    ),
    "empty_record": (lambda b: _set(b, 0, [*_records(b, 0)[:3], "", _records(b, 0)[3]]), DecryptionError),
}


def _flip_flag(record: str) -> str:
    blob = bytearray(base64.b64decode(record))
    blob[0] ^= P.FLAG_END
    return base64.b64encode(bytes(blob)).decode()


@pytest.mark.parametrize("case", sorted(WHOLE_TAMPERS))
def test_whole_tamper_is_detected(case: str) -> None:
    client, headers, body = _whole()
    sgop.decrypt_response(client, headers, body)  # the untampered answer is fine
    tamper, error = WHOLE_TAMPERS[case]
    with pytest.raises(error):
        sgop.decrypt_response(client, headers, tamper(copy.deepcopy(body)))


def test_end_markers_must_agree_on_the_number_of_choices() -> None:
    client = KeyPair.generate()
    a = sgop.server_session(client.public_header, version=2, choices=2)
    body = {"id": "r", "choices": [{"index": 0, "text": a.encrypt_piece("r", "x", 0, last=True)}]}
    key_headers = a.headers
    # a second server session cannot be mixed in (other key); forge a count of 1 with the same key instead
    forged = P.join_records(
        [
            P.seal_record(a._aead, "r", 1, 0, b"y"),
            P.seal_record(a._aead, "r", 1, 1, P.end_plaintext(1), P.FLAG_END),
        ]
    )
    body["choices"].append({"index": 1, "text": forged})
    with pytest.raises(DecryptionError, match="disagree"):
        sgop.decrypt_response(client, key_headers, body)


def test_no_end_marker_at_all_is_truncated() -> None:
    client, headers, events, _ = _stream(1)
    with pytest.raises(TruncatedError, match="cut short"):
        _decrypt_all(client, headers, events[:1])
    with pytest.raises(TruncatedError):
        _decrypt_all(client, headers, [])


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (1,)), ("", (1,)), ("2,1", (2, 1)), (" 1 , 2 ", (1, 2)), ("7,2", (7, 2)), ("1", (1,))],
)
def test_parse_versions(value: str | None, expected: tuple[int, ...]) -> None:
    assert sgop.parse_versions(value) == expected


@pytest.mark.parametrize("value", ["two", "2;1", "2,,1", "-1", "0", "1.5", "２", "1000"])
def test_parse_versions_rejects_garbage(value: str) -> None:
    with pytest.raises(VersionError, match="x-sgop-versions"):
        sgop.parse_versions(value)


def test_negotiate_picks_the_highest_common_version() -> None:
    assert sgop.negotiate((2, 1)) == 2
    assert sgop.negotiate((1, 2)) == 2
    assert sgop.negotiate((1,)) == 1
    assert sgop.negotiate((7, 2)) == 2
    with pytest.raises(VersionError, match="no common"):
        sgop.negotiate((3, 7))


def test_client_reads_the_version_from_the_headers() -> None:
    client = KeyPair.generate()
    v1 = sgop.server_session(client.public_header)
    assert v1.headers["x-sgop-version"] == "1"
    body = v1.encrypt_response({"id": "r", "choices": [{"index": 0, "text": "hi"}]})
    assert sgop.decrypt_response(client, v1.headers, body)["choices"][0]["text"] == "hi"
    assert sgop.decrypt_response(client, {"x-server-public-key": v1.public_header}, body)["choices"][0]["text"] == "hi"
    with pytest.raises(VersionError, match="accepts 2"):  # a client that refuses v1 (no downgrade)
        sgop.decrypt_response(client, v1.headers, body, accept=(2,))
    with pytest.raises(VersionError):
        sgop.client_session(client, {**v1.headers, "x-sgop-version": "9"})
    with pytest.raises(DecryptionError):  # a v1 answer labelled v2 (or back) does not open: other key, other format
        sgop.decrypt_response(client, {**v1.headers, "x-sgop-version": "2"}, body)


def test_request_headers() -> None:
    kp = KeyPair.generate()
    assert kp.request_headers() == {"x-client-public-key": kp.public_header, "x-sgop-versions": "2,1"}
    assert kp.request_headers(versions=(2,))["x-sgop-versions"] == "2"


def test_repr_shows_version_not_keys() -> None:
    client, server = _pair()
    session = sgop.client_session(client, server.headers)
    for text in (repr(server), repr(session)):
        assert "version=2" in text and server.public_header not in text


# --------------------------------------------------------------------------- key ring callback


def test_keyring_on_refresh_is_called_with_each_new_pair() -> None:
    seen: list[KeyPair] = []
    ring = KeyRing(on_refresh=seen.append)
    first = ring.refresh()
    second = ring.refresh()
    assert seen == [first, second]
    assert ring.current() is second


def test_keyring_failing_callback_keeps_the_scheduler_alive() -> None:
    def boom(_kp: KeyPair) -> None:
        raise RuntimeError("metrics down")

    ring = KeyRing(on_refresh=boom)
    ring._scheduled_refresh()  # logged, not raised: the next refresh still runs
    assert ring.refresh_count == 1


def test_sgop_does_not_import_proxy() -> None:
    import subprocess
    import sys

    code = "import sys, sgop, sgop.client; assert not any(m == 'proxy' or m.startswith('proxy.') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


@pytest.mark.parametrize("value", ["0", "3", "two", "1.5"])
def test_min_version_setting_is_validated(value: str) -> None:
    from proxy.settings import Settings, SettingsError

    assert Settings.from_env({}).output_protection_min_version == 1
    assert Settings.from_env({"SGP_OUTPUT_PROTECTION_MIN_VERSION": "2"}).output_protection_min_version == 2
    with pytest.raises(SettingsError, match="SGP_OUTPUT_PROTECTION_MIN_VERSION"):
        Settings.from_env({"SGP_OUTPUT_PROTECTION_MIN_VERSION": value})


# --------------------------------------------------------------------------- the proxy's hook, in process


def _upstream_events(choices: int = 1) -> tuple[KeyPair, dict[str, str], list[dict[str, Any]]]:
    client, headers, events, _ = _stream(choices)
    return client, headers, events


def test_proxy_hook_decrypts_in_place_and_checks_the_end() -> None:
    from proxy.serving.protection import decrypted as _decrypted

    client, headers, events = _upstream_events(2)
    session = sgop.client_session(client, headers)
    out = [e for batch in _decrypted(iter([events[:3], events[3:]]), session, streamed=True) for e in batch]
    assert out[0] is events[0] and out[0]["choices"][0]["text"] == "0:Hel"  # in place: no copies


@pytest.mark.parametrize("streamed", [True, False])
def test_proxy_hook_refuses_a_truncated_answer(streamed: bool) -> None:
    from proxy.errors import OutputProtectionFailedError
    from proxy.serving.protection import decrypted as _decrypted

    client, headers, events = _upstream_events(1)
    batches = _decrypted(iter([events[:-2]]), sgop.client_session(client, headers), streamed=streamed)
    if streamed:
        assert next(batches)  # the pieces so far go out; the end is checked when the upstream is done
    with pytest.raises(OutputProtectionFailedError, match="TruncatedError") as failed:
        next(batches)  # a whole answer: checked before it is handed over (the HTTP layer closes the rest)
    assert failed.value.status == 500


@pytest.mark.parametrize(
    ("kind", "fields", "param"),
    [
        ("chat", {"logprobs": True}, "logprobs"),
        ("chat", {"top_logprobs": 1}, "top_logprobs"),
        ("completion", {"logprobs": 0}, "logprobs"),
        ("chat", {"logprobs": False}, None),
        ("completion", {}, None),
    ],
)
def test_refuse_logprobs(kind: str, fields: dict[str, Any], param: str | None) -> None:
    from proxy.errors import BadRequestError
    from proxy.openai_types import ChatCompletionRequest, CompletionRequest
    from proxy.serving.checks import refuse_logprobs

    if kind == "chat":
        request: Any = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **fields)
    else:
        request = CompletionRequest(model="m", prompt="x", **fields)
    if param is None:
        refuse_logprobs(request)
        return
    with pytest.raises(BadRequestError) as refused:
        refuse_logprobs(request)
    assert refused.value.param == param and refused.value.status == 400


@pytest.mark.parametrize("name", ["x-sgop-versions", "X-Client-Public-Key"])
def test_operator_headers_cannot_override_output_protection(name: str) -> None:
    """SGP_REQUEST_HEADERS_TO_ADD may not set the key or the versions offer (a configured downgrade)."""
    from proxy.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="SGP_REQUEST_HEADERS_TO_ADD"):
        Settings.from_env({"SGP_REQUEST_HEADERS_TO_ADD": f"{name}=1"})
