"""Client API keys: who may use the proxy (``SGP_CLIENT_API_KEYS``, ``SGP_CLIENT_API_KEYS_FILE``).

Only SHA-256 digests are kept in memory. A presented key is hashed and compared
with every stored digest in constant time (``hmac.compare_digest``, no early
exit), so neither the answer's timing nor its content tells how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac

PROTECTED_PREFIXES = ("/v1/", "/metrics")  # /livez, /readyz, /docs and /openapi.json stay open


class ClientKeys:
    """The accepted keys' digests; with none, every request is let in (the proxy is open)."""

    def __init__(self, digests: tuple[bytes, ...]) -> None:
        self._digests = digests

    @property
    def required(self) -> bool:
        return bool(self._digests)

    @staticmethod
    def protects(path: str) -> bool:
        return path.startswith(PROTECTED_PREFIXES)

    def accepts(self, authorization: str | None) -> bool:
        """Whether ``Authorization: Bearer <key>`` carries one of the accepted keys."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        presented = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(digest, presented)
        return found
