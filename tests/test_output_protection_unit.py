"""Unit tests for output protection (the sgop package), protocols v1 and v2.

The known-answer test pins the wire format: if it fails, existing clients break.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import importlib.util
import json
import pickle
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import sgop as op
from sgop import (
    DecryptionError,
    InvalidPublicKeyError,
    KeyPair,
    KeyRing,
    NotProtectedError,
    OutputProtectionError,
)

# --------------------------------------------------------------------------- known answer

KAT_CLIENT_PRIVATE = bytes(range(1, 33))  # 01 02 .. 20
KAT_SERVER_PRIVATE = bytes(range(33, 65))  # 21 22 .. 40
KAT_NONCE = bytes(range(0xA0, 0xAC))  # a0 a1 .. ab
KAT_RESPONSE_ID = "cmpl-kat-0001"
KAT_TEXT = "Héllo, wörld! 👋"
KAT_CLIENT_HEADER = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
KAT_SERVER_HEADER = "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns="
KAT_KEY_HEX = "4eeb3c73a0e2f2069beb9726ab0328a896fed544731e1a9e050582bc038e76ce"
KAT_PIECE = "sgop1:oKGio6SlpqeoqaqrEui9oE23wOCWB4fb49IS7ybA1zsEQ473a/lRVz/CYU7C2dZH"


def test_known_answer_module() -> None:
    client = KeyPair.from_private_bytes(KAT_CLIENT_PRIVATE)
    server = KeyPair.from_private_bytes(KAT_SERVER_PRIVATE)
    assert client.public_header == KAT_CLIENT_HEADER
    assert server.public_header == KAT_SERVER_HEADER

    server_side = op.derive_key(server.private_key, client.public_raw, client.public_raw, server.public_raw)
    client_side = op.derive_key(client.private_key, server.public_raw, client.public_raw, server.public_raw)
    assert server_side.hex() == KAT_KEY_HEX
    assert client_side.hex() == KAT_KEY_HEX

    key = bytes.fromhex(KAT_KEY_HEX)
    assert op.encrypt_piece(key, KAT_RESPONSE_ID, KAT_TEXT, nonce=KAT_NONCE) == KAT_PIECE
    assert op.decrypt_piece(key, KAT_RESPONSE_ID, KAT_PIECE) == KAT_TEXT

    session = op.client_session(client, KAT_SERVER_HEADER)
    assert session.decrypt_piece(KAT_RESPONSE_ID, KAT_PIECE) == KAT_TEXT
    body = {"id": KAT_RESPONSE_ID, "choices": [{"index": 0, "text": KAT_PIECE}]}
    plain = op.decrypt_response(client, KAT_SERVER_HEADER, body)
    assert plain["choices"][0]["text"] == KAT_TEXT


def test_known_answer_independent_derivation() -> None:
    """Redo v1 step by step with raw cryptography + stdlib base64 only."""
    # 1. key pairs and header values: base64 (standard, padded) of 32 raw bytes
    client_priv = X25519PrivateKey.from_private_bytes(KAT_CLIENT_PRIVATE)
    server_priv = X25519PrivateKey.from_private_bytes(KAT_SERVER_PRIVATE)
    client_pub_raw = client_priv.public_key().public_bytes_raw()
    server_pub_raw = server_priv.public_key().public_bytes_raw()
    assert len(client_pub_raw) == len(server_pub_raw) == 32
    assert base64.b64encode(client_pub_raw).decode() == KAT_CLIENT_HEADER
    assert base64.b64encode(server_pub_raw).decode() == KAT_SERVER_HEADER

    # 2. X25519 shared secret, same from both sides
    shared = server_priv.exchange(X25519PublicKey.from_public_bytes(client_pub_raw))
    assert shared == client_priv.exchange(X25519PublicKey.from_public_bytes(server_pub_raw))

    # 3. HKDF-SHA256, salt b"", info b"sgop-v1" + client_pub + server_pub, 32 bytes
    info = b"sgop-v1" + client_pub_raw + server_pub_raw
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=info).derive(shared)
    assert key.hex() == KAT_KEY_HEX

    # 3b. the same HKDF written out with hmac (RFC 5869): extract, then one expand block
    prk = hmac.new(b"\x00" * 32, shared, hashlib.sha256).digest()  # empty salt
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    assert okm == key

    # 4. piece: "sgop1:" + b64(nonce || AESGCM(key).encrypt(nonce, text, id))
    sealed = AESGCM(key).encrypt(KAT_NONCE, KAT_TEXT.encode("utf-8"), KAT_RESPONSE_ID.encode("utf-8"))
    assert len(sealed) == len(KAT_TEXT.encode("utf-8")) + 16
    piece = "sgop1:" + base64.b64encode(KAT_NONCE + sealed).decode()
    assert piece == KAT_PIECE

    # 5. and back
    blob = base64.b64decode(KAT_PIECE.removeprefix("sgop1:"), validate=True)
    plain = AESGCM(key).decrypt(blob[:12], blob[12:], KAT_RESPONSE_ID.encode())
    assert plain.decode("utf-8") == KAT_TEXT


# --------------------------------------------------------------------------- helpers


def _protect(body: dict[str, Any], client: KeyPair) -> tuple[dict[str, Any], str, op.ServerSession]:
    session = op.server_session(client.public_header)
    return session.encrypt_response(body), session.public_header, session


def _completion(rid: str = "cmpl-1", texts: tuple[str, ...] = ("hello",)) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def _chat(rid: str = "chatcmpl-1", content: str | None = "hello") -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": None,
    }


UNICODE_TEXTS = ("", "plain", "Grüße, 世界! 🌍🚀", "a\nb\tc\x00d", "é" * 5000)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_piece_round_trip(text: str) -> None:
    client = KeyPair.generate()
    server = op.server_session(client.public_header)
    piece = server.encrypt_piece("rid-7", text)
    assert piece.startswith("sgop1:")
    assert op.is_protected_piece(piece)
    if text:
        assert text not in piece
    session = op.client_session(client, server.public_header)
    assert session.decrypt_piece("rid-7", piece) == text


def test_nonces_are_random() -> None:
    client = KeyPair.generate()
    server = op.server_session(client.public_header)
    assert server.encrypt_piece("r", "same") != server.encrypt_piece("r", "same")


def test_each_server_session_is_ephemeral() -> None:
    client = KeyPair.generate()
    a = op.server_session(client.public_header)
    b = op.server_session(client.public_header)
    assert a.public_header != b.public_header


def test_whole_completion_round_trip_multiple_choices() -> None:
    client = KeyPair.generate()
    body = _completion(texts=UNICODE_TEXTS)
    protected, header, _ = _protect(body, client)
    for choice in protected["choices"]:
        assert choice["text"].startswith("sgop1:")  # empty pieces are encrypted too
    assert protected["id"] == body["id"]
    assert protected["usage"] == body["usage"]
    plain = op.decrypt_response(client, header, protected)
    assert plain == body
    # returns a copy, input untouched
    assert protected["choices"][0]["text"].startswith("sgop1:")


def test_whole_chat_round_trip() -> None:
    client = KeyPair.generate()
    body = _chat(content="Grüße 🌍")
    protected, header, _ = _protect(body, client)
    msg = protected["choices"][0]["message"]
    assert msg["content"].startswith("sgop1:")
    assert msg["role"] == "assistant"
    assert op.decrypt_response(client, header, protected) == body


def test_chat_null_content_is_not_a_piece() -> None:
    client = KeyPair.generate()
    body = _chat(content=None)
    protected, header, _ = _protect(body, client)
    assert protected == body
    assert op.decrypt_response(client, header, protected) == body


def test_chat_empty_content_is_a_piece() -> None:
    client = KeyPair.generate()
    protected, header, _ = _protect(_chat(content=""), client)
    assert protected["choices"][0]["message"]["content"].startswith("sgop1:")
    plain = op.decrypt_response(client, header, protected)
    assert plain["choices"][0]["message"]["content"] == ""


def _completion_chunks(rid: str, pieces: list[str]) -> list[dict]:
    chunks = [
        {
            "id": rid,
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}],
        }
        for p in pieces
    ]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    chunks.append(
        {
            "id": rid,
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )
    return chunks


def _chat_chunks(rid: str, pieces: list[str]) -> list[dict]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
        },
    ]
    chunks += [
        {
            **base,
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
        }
        for p in pieces
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"total_tokens": 3}})
    return chunks


@pytest.mark.parametrize("shape", ["completion", "chat"])
def test_stream_round_trip(shape: str) -> None:
    client = KeyPair.generate()
    pieces = ["Hel", "", "lo ", "wörld ", "🌍"]
    chunks = (_completion_chunks if shape == "completion" else _chat_chunks)("stream-1", pieces)
    server = op.server_session(client.public_header)
    protected = [server.encrypt_chunk(c) for c in chunks]
    n_encrypted = 0
    for p, c in zip(protected, chunks, strict=True):
        for pc, cc in zip(p["choices"], c["choices"], strict=True):
            if "text" in cc:
                assert pc["text"].startswith("sgop1:")
                n_encrypted += 1
            elif "content" in cc["delta"]:
                assert pc["delta"]["content"].startswith("sgop1:")
                n_encrypted += 1
            else:
                assert pc == cc  # role / finish chunks untouched
        if not c["choices"]:
            assert p == c  # usage-only chunk untouched
    assert n_encrypted == len(pieces)

    out = list(op.decrypt_stream(client, server.public_header, iter(protected)))
    assert out == chunks
    text = "".join((ch.get("text") or ch.get("delta", {}).get("content") or "") for o in out for ch in o["choices"])
    assert text == "".join(pieces)


def test_stream_is_lazy_and_fails_at_the_bad_chunk() -> None:
    client = KeyPair.generate()
    server = op.server_session(client.public_header)
    chunks = [server.encrypt_chunk(c) for c in _completion_chunks("s", ["a", "b"])]
    chunks[1]["choices"][0]["text"] = chunks[1]["choices"][0]["text"][:-4] + "AAA="
    it = op.decrypt_stream(client, server.public_header, chunks)
    assert next(it)["choices"][0]["text"] == "a"
    with pytest.raises(DecryptionError):
        next(it)


def test_stream_error_event_passes_through() -> None:
    client = KeyPair.generate()
    server = op.server_session(client.public_header)
    event = {"error": {"message": "boom", "type": "x", "param": None, "code": 500}}
    assert list(op.decrypt_stream(client, server.public_header, [event])) == [event]


def test_decrypt_chunk_function() -> None:
    client = KeyPair.generate()
    server = op.server_session(client.public_header)
    chunk = server.encrypt_chunk(_chat_chunks("c", ["x"])[1])
    out = op.decrypt_chunk(client, server.public_header, chunk)
    assert out["choices"][0]["delta"]["content"] == "x"


# --------------------------------------------------------------------------- failures


def _protected_completion() -> tuple[KeyPair, str, dict]:
    client = KeyPair.generate()
    protected, header, _ = _protect(_completion(rid="cmpl-A"), client)
    return client, header, protected


def test_tampered_ciphertext_fails() -> None:
    client, header, protected = _protected_completion()
    piece = protected["choices"][0]["text"]
    blob = bytearray(base64.b64decode(piece[6:]))
    for pos in (0, 12, len(blob) - 1):  # nonce, ciphertext, tag
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        body = copy.deepcopy(protected)
        body["choices"][0]["text"] = "sgop1:" + base64.b64encode(bytes(bad)).decode()
        with pytest.raises(DecryptionError):
            op.decrypt_response(client, header, body)


def test_wrong_aad_other_response_id_fails() -> None:
    client, header, protected = _protected_completion()
    protected["id"] = "cmpl-B"
    with pytest.raises(DecryptionError):
        op.decrypt_response(client, header, protected)


def test_missing_response_id_fails() -> None:
    client, header, protected = _protected_completion()
    del protected["id"]
    with pytest.raises(DecryptionError):
        op.decrypt_response(client, header, protected)


def test_wrong_client_key_fails() -> None:
    _, header, protected = _protected_completion()
    with pytest.raises(DecryptionError):
        op.decrypt_response(KeyPair.generate(), header, protected)


def test_wrong_server_key_fails() -> None:
    client, _, protected = _protected_completion()
    other = op.server_session(client.public_header).public_header
    with pytest.raises(DecryptionError):
        op.decrypt_response(client, other, protected)


@pytest.mark.parametrize(
    "piece",
    ["sgop1:", "sgop1:!!!notbase64", "sgop1:AAAA", "sgop1:" + "A" * 36, 42],
)
def test_malformed_piece_fails(piece: object) -> None:
    client, header, protected = _protected_completion()
    protected["choices"][0]["text"] = piece
    with pytest.raises(DecryptionError):
        op.decrypt_response(client, header, protected)


def test_plain_piece_is_not_protected() -> None:
    client, header, protected = _protected_completion()
    protected["choices"][0]["text"] = "hello in clear"
    with pytest.raises(NotProtectedError):
        op.decrypt_response(client, header, protected)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_server_key_is_not_protected(header: str | None) -> None:
    client = KeyPair.generate()
    with pytest.raises(NotProtectedError, match="x-server-public-key"):
        op.decrypt_response(client, header, _completion())
    with pytest.raises(NotProtectedError):
        op.decrypt_stream(client, header, [])  # fails before the first chunk


@pytest.mark.parametrize(
    "header",
    [
        "not base64!",
        base64.b64encode(b"\x01" * 31).decode(),  # too short
        base64.b64encode(b"\x01" * 33).decode(),  # too long
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),  # wrong alphabet
        base64.b64encode(b"\x01" * 32).decode().rstrip("="),  # unpadded
        base64.b64encode(b"\x00" * 32).decode(),  # low-order point
        "Ünïcode",
    ],
)
def test_garbled_server_key(header: str) -> None:
    client = KeyPair.generate()
    with pytest.raises(InvalidPublicKeyError) as info:
        op.client_session(client, header)
    assert "x-server-public-key" in str(info.value)


def test_garbled_client_key_on_server_side() -> None:
    with pytest.raises(InvalidPublicKeyError, match="x-client-public-key"):
        op.server_session("garbage")
    with pytest.raises(InvalidPublicKeyError, match="missing"):
        op.server_session(None)
    low_order = base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(InvalidPublicKeyError, match="x-client-public-key"):
        op.server_session(low_order)


def test_header_with_surrounding_whitespace_and_bytes_is_accepted() -> None:
    client = KeyPair.generate()
    server = op.server_session(f" {client.public_header} ".encode())
    session = op.client_session(client, f"{server.public_header}\t")
    assert session.decrypt_piece("r", server.encrypt_piece("r", "ok")) == "ok"


def test_error_hierarchy() -> None:
    for exc in (NotProtectedError, DecryptionError, InvalidPublicKeyError):
        assert issubclass(exc, OutputProtectionError)


def test_bad_nonce_length_rejected() -> None:
    with pytest.raises(ValueError, match="nonce"):
        op.encrypt_piece(b"\x00" * 32, "r", "t", nonce=b"\x00" * 8)


def test_server_encrypt_without_id_rejected() -> None:
    client = KeyPair.generate()
    body = _completion()
    del body["id"]
    with pytest.raises(ValueError, match="id"):
        op.server_session(client.public_header).encrypt_response(body)


# --------------------------------------------------------------------------- key hygiene


def test_repr_hides_key_material() -> None:
    kp = KeyPair.from_private_bytes(KAT_CLIENT_PRIVATE)
    ring = KeyRing(kp)
    client_session = op.client_session(kp, KAT_SERVER_HEADER)
    server_session = op.server_session(kp.public_header)
    private_hex = KAT_CLIENT_PRIVATE.hex()
    for text in (
        repr(kp),
        str(kp),
        repr(ring),
        repr(client_session),
        repr(server_session),
    ):
        assert private_hex not in text
        assert kp.public_header not in text
        assert "fingerprint" in text
    assert kp.fingerprint in repr(kp)
    assert len(kp.fingerprint) == 12
    with pytest.raises(TypeError):
        pickle.dumps(kp)
    assert copy.deepcopy(kp) is kp


# --------------------------------------------------------------------------- key ring


def test_keyring_refresh_swaps_and_counts() -> None:
    ring = KeyRing()
    first = ring.current()
    assert ring.refresh_count == 0
    new = ring.refresh()
    assert ring.current() is new is not first
    assert ring.refresh_count == 1
    assert first.public_header != new.public_header


def test_request_keeps_its_key_across_refresh() -> None:
    """A request in flight decrypts with the pair it started with."""
    ring = KeyRing()
    kp = ring.current()  # request starts: sends kp.public_header upstream
    server = op.server_session(kp.public_header)
    protected = server.encrypt_response(_completion(rid="inflight"))
    ring.refresh()
    ring.refresh()
    plain = op.decrypt_response(kp, server.public_header, protected)
    assert plain["choices"][0]["text"] == "hello"
    with pytest.raises(DecryptionError):  # the ring's new key would not work
        op.decrypt_response(ring.current(), server.public_header, protected)


def test_keyring_concurrent_refresh_and_read() -> None:
    ring = KeyRing()
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()
    start = threading.Barrier(8 + 4)

    def refresher() -> None:
        try:
            start.wait()
            for _ in range(50):
                ring.refresh()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            start.wait()
            while not stop.is_set():
                kp = ring.current()
                assert isinstance(kp, KeyPair)
                assert len(kp.public_raw) == 32
                assert op.decode_public_key(kp.public_header) == kp.public_raw
                seen.add(kp.public_header)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    refreshers = [threading.Thread(target=refresher) for _ in range(8)]
    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in refreshers + readers:
        t.start()
    for t in refreshers:
        t.join(timeout=30)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, errors
    assert ring.refresh_count == 8 * 50
    assert len(seen) > 1
    # the final current pair still works end to end
    kp = ring.current()
    server = op.server_session(kp.public_header)
    assert op.client_session(kp, server.public_header).decrypt_piece("r", server.encrypt_piece("r", "x")) == "x"


def test_scheduler_really_refreshes() -> None:
    ring = KeyRing()
    first = ring.current()
    scheduler = ring.start_refresh(0.2)
    try:
        assert scheduler.running
        assert ring.running
        with pytest.raises(RuntimeError):
            ring.start_refresh(0.2)
        deadline = time.monotonic() + 5
        time.sleep(1.0)
        while ring.refresh_count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ring.refresh_count >= 2
        assert ring.current() is not first
    finally:
        ring.stop()
    assert not ring.running
    time.sleep(0.1)
    assert not scheduler.running
    count = ring.refresh_count
    time.sleep(0.5)
    assert ring.refresh_count == count  # really stopped
    ring.stop()  # idempotent


@pytest.mark.parametrize("interval", [0, -1])
def test_scheduler_rejects_bad_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        KeyRing().start_refresh(interval)


# --------------------------------------------------------------------------- example + SDK


class _ProtectedHandler(BaseHTTPRequestHandler):
    """A stand-in protected server: answers chat requests with sgop1 pieces."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length))
        session = op.server_session(self.headers.get("x-client-public-key"))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if request.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("x-server-public-key", session.public_header)
            self.end_headers()
            for chunk in _chat_chunks(rid, ["Grüße ", "", "🌍"]):
                data = json.dumps(session.encrypt_chunk(chunk))
                self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        body = json.dumps(session.encrypt_response(_chat(rid, "Grüße 🌍"))).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-server-public-key", session.public_header)
        self.end_headers()
        self.wfile.write(body)


def _load_example() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "output_protection_client.py"
    spec = importlib.util.spec_from_file_location("output_protection_client", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_client_with_openai_sdk_over_a_socket() -> None:
    openai = pytest.importorskip("openai")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProtectedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            api_key="x",
            max_retries=0,
        )
        example = _load_example()
        kp = KeyPair.generate()
        assert example.whole_answer(client, "m", "hi", kp) == "Grüße 🌍"
        assert example.streamed_answer(client, "m", "hi", kp) == "Grüße 🌍"
        # without the helper the SDK hands back ciphertext only
        raw = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-client-public-key": kp.public_header},
        )
        assert raw.choices[0].message.content.startswith("sgop1:")
    finally:
        server.shutdown()
        server.server_close()


def test_example_help_runs() -> None:
    with pytest.raises(SystemExit) as info:
        _load_example().main(["--help"])
    assert info.value.code == 0
