"""Name -> entry registries: one per choice a user picks by name (detectors, schedulers, blends, ...).

Front ends read `names()` when they build their choices (the CLI builds its parser per call, so an
entry registered later still shows up), and look entries up by name; an unknown name raises one
ValueError listing the known names.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries (factories, functions or values) by name, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """`registry.register("name", entry)`, or `@registry.register("name")` on a function or class.

        Registering a taken name raises: replace an entry with `unregister` first."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        return self._entries.pop(self._known(name))

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def _known(self, name: str) -> str:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return name

    def __getitem__(self, name: str) -> T:
        return self._entries[self._known(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

