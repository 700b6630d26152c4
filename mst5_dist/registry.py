"""A table of named implementations that a config key chooses between (``optim.scheduler``,
``loss.objective``, ``data.format``): a new one is a registered function or class, not another
branch, and an unknown name is a ``ConfigError`` naming the key and every registered name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mst5_dist.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str, what: str) -> None:
        self.key, self.what = key, what  # the config key that chooses, and what it names
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``key=NAME`` choose the decorated function or class."""

        def add(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.key}: unknown {self.what} {name!r} (registered: {', '.join(self.names())})")
        return self._entries[name]
