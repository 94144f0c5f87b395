#!/usr/bin/env python
"""Decrypt Stained Glass Output Protection yourself, with the OpenAI SDK.

Use this when the proxy runs with ``SGP_OUTPUT_DECRYPTION=False`` in front of a
protected inference server: the proxy forwards your ``x-client-public-key`` and
relays the ciphertext, so only you can read the answer.

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

if importlib.util.find_spec("proxy") is None:  # run from a checkout without installing: add the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.output_protection import (
    CLIENT_PUBLIC_KEY_HEADER,
    SERVER_PUBLIC_KEY_HEADER,
    KeyPair,
    OutputProtectionError,
    client_session,
    decrypt_response,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8600/v1"


def whole_answer(client: OpenAI, model: str, prompt: str, keypair: KeyPair) -> str:
    """Ask once, read ``x-server-public-key`` from the raw response, decrypt."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        extra_headers={CLIENT_PUBLIC_KEY_HEADER: keypair.public_header},
    )
    server_key = raw.headers.get(SERVER_PUBLIC_KEY_HEADER)
    completion = raw.parse()
    # model_dump keeps the response "id": it is the associated data of every piece.
    plain = decrypt_response(keypair, server_key, completion.model_dump())
    return plain["choices"][0]["message"]["content"] or ""


def streamed_answer(client: OpenAI, model: str, prompt: str, keypair: KeyPair) -> str:
    """Stream, then decrypt each chunk as it arrives."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=True,
        extra_headers={CLIENT_PUBLIC_KEY_HEADER: keypair.public_header},
    )
    # One session per response: checks the header once, derives the key once.
    session = client_session(keypair, raw.headers.get(SERVER_PUBLIC_KEY_HEADER))
    parts: list[str] = []
    for chunk in raw.parse():
        plain = session.decrypt_chunk(chunk.model_dump())
        for choice in plain["choices"]:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                parts.append(piece)
                print(piece, end="", flush=True)
    print()
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run both examples against a proxy; exit 1 on a protection error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url",
        default=os.environ.get("SGP_BASE_URL")
        or os.environ.get("OPENAI_BASE_URL")
        or DEFAULT_BASE_URL,
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
