"""Output protection at the serving layer: which headers cross, the key check, and the decryption hook.

The proxy either decrypts the answer with its own key pair (``SGP_OUTPUT_DECRYPTION``)
or relays ciphertext to a client that sent its own key; ``sgop`` does the cryptography.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Any

import sgop
from proxy.errors import BadRequestError, OutputProtectionFailedError

CLIENT_KEY_HEADER = sgop.CLIENT_PUBLIC_KEY_HEADER
SERVER_KEY_HEADER = sgop.SERVER_PUBLIC_KEY_HEADER
# client headers the upstream may see (the versions header only beside the client's key)
FORWARDED_HEADERS = ("Authorization", CLIENT_KEY_HEADER, sgop.VERSIONS_HEADER)
RELAYED_HEADERS = (SERVER_KEY_HEADER, sgop.VERSION_HEADER)  # upstream headers the client needs to decrypt itself
NOT_PROTECTED = (
    "The inference service is not protected by output protection (its answer carries no "
    f"{SERVER_KEY_HEADER}); set SGP_OUTPUT_DECRYPTION=False for an unprotected inference service."
)


def relayed_key_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's own key (and versions) for the upstream, re-encoded from what they parse to.

    Why: these headers cross to the inference service; re-encoding means only a key and a version
    list ever do, never whatever text a client put there. A malformed one is the client's 400.
    """
    try:
        key = sgop.decode_public_key(headers[CLIENT_KEY_HEADER], header=CLIENT_KEY_HEADER)
        offered = headers.get(sgop.VERSIONS_HEADER)
        versions = sgop.parse_versions(offered)
    except sgop.OutputProtectionError as exc:
        raise BadRequestError(str(exc), code="invalid_output_protection_header") from None
    out = {CLIENT_KEY_HEADER: base64.b64encode(key).decode("ascii")}
    if offered:
        out[sgop.VERSIONS_HEADER] = sgop.format_versions(versions)
    return out


def protection(
    reply_headers: Mapping[str, str], keypair: sgop.KeyPair | None, versions: tuple[int, ...]
) -> tuple[sgop.ClientSession | None, dict[str, str]]:
    """Decrypt with the request's own key, or relay the server's key and version to the client."""
    if keypair is None:
        return None, {name: reply_headers[name] for name in RELAYED_HEADERS if reply_headers.get(name)}
    if not reply_headers.get(SERVER_KEY_HEADER):
        raise OutputProtectionFailedError(NOT_PROTECTED, code="output_not_protected")
    try:
        return sgop.client_session(keypair, reply_headers, versions), {}
    except sgop.OutputProtectionError as exc:
        raise OutputProtectionFailedError(f"output protection: {exc}", code="output_protection_failed") from None


def decrypted(
    batches: Iterator[list[dict[str, Any]]], session: sgop.ClientSession, streamed: bool
) -> Iterator[list[dict[str, Any]]]:
    """The upstream's events with their text decrypted in place; a v2 answer is checked complete at its end.

    Runs before the shaper: everything after it (shaping, stop sequences) sees plain text. A whole
    answer is one batch, checked before it is yielded (the HTTP layer takes it and closes the rest).
    """
    try:
        for batch in batches:
            for event in batch:
                session.open_event(event)
            if not streamed:
                session.finish()
            yield batch
        session.finish()
    except sgop.OutputProtectionError as exc:
        raise OutputProtectionFailedError(
            f"output protection: the answer failed to decrypt or verify ({type(exc).__name__})",
            code="output_protection_failed",
        ) from None
