"""Consumers and their handlers, chosen by AMQP topic patterns (`*` one word, `#` any)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar, overload

from pydantic import BaseModel
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.messaging.envelope import Envelope

ModelT = TypeVar("ModelT", bound=BaseModel)

Handler = Callable[[AsyncSession, Envelope[Any]], Awaitable[None]]
ModelHandler = Callable[[AsyncSession, Envelope[ModelT]], Awaitable[None]]
RawHandler = Callable[[AsyncSession, Envelope[Mapping[str, Any]]], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, Sequence[Envelope[Any]]], Awaitable[None]]
"""Applies several messages of one route in one call, as the handler would one by one."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,150}$")
_WORD = re.compile(r"^(\*|#|[A-Za-z0-9_-]+)$")


def validate_pattern(pattern: str) -> str:
    """`pattern` if it is a topic binding key (dot-separated words, `*`, `#`)."""
    if not pattern or not all(_WORD.match(word) for word in pattern.split(".")):
        raise ValueError(f"not a topic pattern: {pattern!r}")
    return pattern


@lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic exchange would route `routing_key` through a binding with `pattern`."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


@dataclass(frozen=True)
class Route:
    """One handler and the routing keys and schema it accepts."""

    pattern: str
    handler: Handler
    schema: type[BaseModel] | None = None
    batch_handler: BatchHandler | None = None
    """When set, a runner that applies several messages in one transaction hands it the
    consecutive messages of this route at once (the handler must then take its row locks
    in an order that does not depend on the messages, or two batches can deadlock)."""

    def parse(self, payload: Mapping[str, Any]) -> Any:
        """The event as the handler expects it; pydantic's ValidationError when it does not fit."""
        if self.schema is None:
            return payload
        return self.schema.model_validate(payload)


class Consumer:
    """A named consumer of one exchange: handlers by routing-key pattern, inbox, dead letters.

    The same definition runs against RabbitMQ (`ConsumerRunner`) and in-process in
    embedded mode (`LocalRelay`). `inbox` is an `inbox_table()` in the consumer's own
    schema; `dead_letters` a `dead_letter_table()` there, which embedded mode needs
    because it has no dead-letter queue.
    """

    def __init__(
        self,
        name: str,
        *,
        exchange: str,
        inbox: Table,
        dead_letters: Table | None = None,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"consumer name must be lower-case words with . - _: {name!r}")
        self.name = name
        self.exchange = exchange
        self.inbox = inbox
        self.dead_letters = dead_letters
        self._routes: list[Route] = []

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, exchange={self.exchange!r}, patterns={self.patterns})"

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.pattern for route in self._routes))

    def add(
        self,
        pattern: str,
        handler: Handler,
        *,
        schema: type[BaseModel] | None = None,
        batch: BatchHandler | None = None,
    ) -> None:
        """Route messages matching `pattern` to `handler` (and batches of them to `batch`);
        the first matching route wins."""
        self._routes.append(Route(validate_pattern(pattern), handler, schema, batch))

    @overload
    def on(self, pattern: str) -> Callable[[RawHandler], RawHandler]: ...

    @overload
    def on(
        self, pattern: str, schema: type[ModelT]
    ) -> Callable[[ModelHandler[ModelT]], ModelHandler[ModelT]]: ...

    def on(
        self, pattern: str, schema: type[BaseModel] | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator form of `add`: `@consumer.on("task.*", TaskEvent)`."""

        def register(handler: Handler) -> Handler:
            self.add(pattern, handler, schema=schema)
            return handler

        return register

    def route(self, routing_key: str) -> Route | None:
        """The route a message with `routing_key` goes to, or None."""
        for route in self._routes:
            if topic_matches(route.pattern, routing_key):
                return route
        return None
