#!/usr/bin/env python
"""Decrypt Stained Glass Output Protection yourself, with the OpenAI SDK.

Use this when the proxy runs with ``SGP_OUTPUT_DECRYPTION=False`` in front of a
protected inference server: the proxy forwards your ``x-client-public-key`` (and
``x-sgop-versions``) and relays the ciphertext, so only you can read the answer.
It needs only the ``sgop`` package (and ``cryptography``, ``pybase64``), not the proxy.

    python examples/output_protection_client.py --base-url http://127.0.0.1:8600/v1

The base URL can also come from ``SGP_BASE_URL`` (or ``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai import OpenAI

if importlib.util.find_spec("sgop") is None:  # run from a checkout without installing: add the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgop import KeyPair, OutputProtectionError, client_session, decrypt_response

DEFAULT_BASE_URL = "http://127.0.0.1:8600/v1"


def whole_answer(client: OpenAI, model: str, prompt: str, keypair: KeyPair) -> str:
    """Ask once, decrypt with the raw response's headers (server key and protocol version)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        extra_headers=keypair.request_headers(),  # x-client-public-key, x-sgop-versions: 2,1
    )
    completion = raw.parse()
    # model_dump keeps the response "id": it is part of the associated data of every piece.
    plain = decrypt_response(keypair, raw.headers, completion.model_dump())
    return plain["choices"][0]["message"]["content"] or ""


def streamed_answer(client: OpenAI, model: str, prompt: str, keypair: KeyPair) -> str:
    """Stream, decrypt each chunk as it arrives, then check that nothing was cut off."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=True,
        extra_headers=keypair.request_headers(),
    )
    # One session per response: checks the headers once, derives the key once,
    # and (protocol v2) checks every piece's place in the answer.
    session = client_session(keypair, raw.headers)
    parts: list[str] = []
    for chunk in raw.parse():
        plain = session.decrypt_chunk(chunk.model_dump())
        for choice in plain["choices"]:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                parts.append(piece)
                print(piece, end="", flush=True)
    session.finish()  # v2: every choice reached its authenticated end (raises if the stream was cut short)
    print()
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run both examples against a proxy; exit 1 on a protection error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url",
        default=os.environ.get("SGP_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        help=f"proxy base URL (env SGP_BASE_URL; default {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", "unused"),
        help="API key sent as a bearer token (env OPENAI_API_KEY)",
    )
    parser.add_argument("--model", default=os.environ.get("SGP_MODEL", "model"))
    parser.add_argument("--prompt", default="Write me a short poem.")
    args = parser.parse_args(argv)

    from openai import APIError, OpenAI  # only needed when talking to a server

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    keypair = KeyPair.generate()  # one per run; could be one per request
    print(f"client key: {keypair!r}")  # repr shows only a fingerprint
    try:
        print("whole:", whole_answer(client, args.model, args.prompt, keypair))
        print("streamed: ", end="")
        streamed_answer(client, args.model, args.prompt, keypair)
    except OutputProtectionError as exc:
        print(f"output protection error: {exc}", file=sys.stderr)
        return 1
    except APIError as exc:
        print(f"request failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
