"""A name-to-builder mapping with a factory that names the valid choices on a bad name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from flairseg.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Holds builders by name; `register` is a decorator, `get` fails with the list of names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(builder: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
