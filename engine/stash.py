"""Typed per-run storage for plugin-private state (pytest's stash.py).

A plugin keeps its state under a module-level `StashKey[T]()` instead of
setting attributes on shared objects, so two plugins never collide.
"""
from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    __slots__ = ()


class Stash:
    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return self._data[key]  # type: ignore[return-value]

    def get(self, key: StashKey[T], default: D) -> T | D:
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        try:
            return self[key]
        except KeyError:
            self[key] = default
            return default

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._data
