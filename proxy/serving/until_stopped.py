"""A reply's shaped batches until every choice has stopped; then the upstream is closed (proxy/stop.py finds stops)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from proxy.openai_types import ResponseShaper
from proxy.stop import StopSequences


def closing_usage(
    stopper: StopSequences, shaper: ResponseShaper, prompt_tokens: int
) -> Callable[[], list[dict[str, Any]]]:
    """The usage chunk made here for an answer cut off by stop strings: the upstream's own never comes."""

    def closing() -> list[dict[str, Any]]:
        completion = stopper.completion_tokens()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion}
        return [shaper.usage_event({**usage, "total_tokens": prompt_tokens + completion})]

    return closing


class UntilStopped:
    """Shaped batches of an upstream reply; once every choice has stopped, a last batch and the reply is closed.

    A class, not a generator, so that :meth:`close` reaches the reply even if iteration never started.
    """

    def __init__(
        self,
        batches: Iterable[list[dict[str, Any]]],
        shape: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        close: Callable[[], None],
        stops: StopSequences | None = None,
        closing: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._batches: Iterator[list[dict[str, Any]]] = iter(batches)
        self._shape = shape
        self._close = close
        self._stops = stops
        self._closing = closing
        self._ended = False

    def __iter__(self) -> UntilStopped:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        if self._ended:
            raise StopIteration
        shaped = self._shape(next(self._batches))
        if self._stops is not None and self._stops.finished:
            self._ended = True
            self.close()  # the upstream stops generating: the answer is complete
            if self._closing is not None:
                shaped = shaped + self._closing()
        return shaped

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        self._close()
