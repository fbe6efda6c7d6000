"""The agent's handler table: each method of the protocol bound to the one handler that
serves it, which takes the request model the dispatch validated (and the stream, for a
streamed method) and answers with the method's result model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from migrate.wire.messages import METHODS
from migrate.wire.methods import Request
from migrate.wire.results import Result
from migrate.wire.stream import StreamReader

Q = TypeVar("Q", bound=Request[Any])


@dataclass(frozen=True)
class Handler:
    """One method's handler, called with its validated request (and stream, if it has one)."""

    model: type[Request[Any]]
    run: Callable[[Request[Any], StreamReader | None], Result]

    def __call__(self, req: Request[Any], stream: StreamReader | None = None) -> Result:
        result = self.run(req, stream)
        if not isinstance(result, self.model.result):
            # A handler answering with another shape than its method declares: a bug.
            raise TypeError(
                f"{self.model.method} answered {type(result).__name__}, "
                f"not {self.model.result.__name__}"
            )
        return result


def plain(model: type[Q], fn: Callable[[Q], Result]) -> Handler:
    """The handler of a method without a stream."""
    if model.stream:
        raise TypeError(f"{model.method} takes a stream")

    def run(req: Request[Any], stream: StreamReader | None) -> Result:
        return fn(cast(Q, req))  # the dispatch validated it as ``model``

    return Handler(model, run)


def streamed(model: type[Q], fn: Callable[[Q, StreamReader], Result]) -> Handler:
    """The handler of a method whose request is followed by a stream."""
    if not model.stream:
        raise TypeError(f"{model.method} takes no stream")

    def run(req: Request[Any], stream: StreamReader | None) -> Result:
        if stream is None:
            raise TypeError(f"{model.method} needs its stream")
        return fn(cast(Q, req), stream)

    return Handler(model, run)


def handler_table(handlers: Iterable[Handler]) -> dict[str, Handler]:
    """The table by method name; it must serve exactly the protocol's methods, once each (a
    method nobody serves, or served twice, is a bug, caught when the agent starts)."""
    table: dict[str, Handler] = {}
    for h in handlers:
        if h.model.method in table:
            raise RuntimeError(f"two handlers for {h.model.method}")
        known = METHODS.get(h.model.method)
        if known is None or known.model is not h.model:
            raise RuntimeError(f"{h.model.__name__} is not a method of the protocol")
        table[h.model.method] = h
    missing = set(METHODS) - set(table)
    if missing:
        raise RuntimeError(f"no handler for {sorted(missing)}")
    return table
