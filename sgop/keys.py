"""Key pairs and the key ring: the long-lived secrets, kept out of logs and reprs."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sgop.protocol import (
    CLIENT_PUBLIC_KEY_HEADER,
    SUPPORTED_VERSIONS,
    VERSIONS_HEADER,
    b64encode,
    format_versions,
)

logger = logging.getLogger(__name__)


def fingerprint(public_raw: bytes) -> str:
    """Short SHA-256 fingerprint of a public key, safe to log."""
    return hashlib.sha256(public_raw).hexdigest()[:12]


class KeyPair:
    """An X25519 key pair; ``public_header`` is what goes into a key header.

    The private key is kept out of ``repr``/``str`` so that logging a key pair
    never leaks it; only a short fingerprint of the public key is shown.
    """

    __slots__ = ("_private_key", "public_header", "public_raw")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes_raw()
        self.public_header: str = b64encode(self.public_raw)

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
        return fingerprint(self.public_raw)

    def request_headers(self, versions: Iterable[int] = SUPPORTED_VERSIONS) -> dict[str, str]:
        """The request headers that ask for an answer protected to this key, in one of ``versions``."""
        return {CLIENT_PUBLIC_KEY_HEADER: self.public_header, VERSIONS_HEADER: format_versions(versions)}

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


class KeyRing:
    """The current key pair, refreshed periodically without breaking requests.

    A request calls :meth:`current` once and keeps that :class:`KeyPair` for its
    whole life; :meth:`refresh` only swaps the ring's reference, so a request in
    flight still decrypts with the key it sent upstream. ``on_refresh`` is
    called with each new pair after the swap (metrics count refreshes this way,
    without wrapping the ring).
    """

    def __init__(self, keypair: KeyPair | None = None, on_refresh: Callable[[KeyPair], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._current = keypair or KeyPair.generate()
        self._refresh_count = 0
        self._scheduler: Any = None
        self._on_refresh = on_refresh

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
        if self._on_refresh is not None:
            self._on_refresh(new)
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
