"""What a walk down a chain ends with: the serving entry, the answer, and the entries
passed over on the way (``X-Mana-LLM-Attempts``). Shared by the router, which makes
them, and the stream relay, which carries one to the end of a stream."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .table import Entry

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """One entry passed over before the serving one, and why."""

    target: str
    reason: str

    def to_api(self) -> dict[str, str]:
        return {"model": self.target, "reason": self.reason}


def attempts_header(attempts: list[Attempt]) -> str:
    """``X-Mana-LLM-Attempts``: ``provider/model=reason`` joined by ``, ``."""
    return ", ".join(f"{attempt.target}={attempt.reason}" for attempt in attempts)


@dataclass
class Served(Generic[T]):
    """A request some entry answered: what the caller gets (``value``: an answer dict, or a
    ``Relay`` of stream events) plus how the chain got there."""

    entry: Entry
    alias: str | None
    attempts: list[Attempt]
    value: T
    started: float = 0.0
    release: Callable[[], None] = lambda: None

    @property
    def target(self) -> str:
        return self.entry.target

    def headers(self) -> dict[str, str]:
        headers = {"X-Mana-LLM-Resolved": self.target}
        if self.attempts:
            headers["X-Mana-LLM-Attempts"] = attempts_header(self.attempts)
        return headers
