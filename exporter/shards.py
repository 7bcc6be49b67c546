"""A mapping of up to millions of entries, built entry by entry on the event loop without a long step.

A dict keeps its entries in one table and rebuilds that whole table each time it outgrows it: the last rebuilds of a
million-entry dict take 12 and 25 ms on an idle core and held the exporter's loop 50 and 119 ms while the primary's
first listing of 1,000,000 repositories was read (bench/README.md), a wait for every scrape in flight. ``ShardedMap``
spreads its entries over ``SHARDS`` dicts by the key's hash, so a rebuild moves a 256th of them. Each shard holds only
what the garbage collector does not track (strings and structs without references) and stays out of its view too."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, ItemsView, Iterator, Mapping, ValuesView
from typing import TypeVar, overload

SHARDS = 256

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class ShardedMap(Mapping[K, V]):
    """A read-mostly mapping: entries are set (``map[key] = value``), read, iterated and now and then popped. Its
    order is the shards', not the order of insertion."""

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: tuple[dict[K, V], ...] = tuple({} for _ in range(SHARDS))

    @classmethod
    def of_shards(cls, shards: list[dict[K, V]]) -> ShardedMap[K, V]:
        """The map of ``shards`` as another map's ``shards()`` gave them (copied, say): each key in its own."""
        if len(shards) != SHARDS:
            raise ValueError(f"{len(shards)} shards, not {SHARDS}")
        made = cls()
        made._shards = tuple(shards)
        return made

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) % SHARDS].pop(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) % SHARDS][key] = value

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % SHARDS][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % SHARDS]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...
    def get(self, key: K, default: object = None, /) -> object:
        return self._shards[hash(key) % SHARDS].get(key, default)

    def __iter__(self) -> Iterator[K]:
        return itertools.chain.from_iterable(self._shards)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def shards(self) -> tuple[dict[K, V], ...]:
        return self._shards


class _Items(ItemsView[K, V]):
    """Each shard's own items, in C (the generic view looks up every key again in Python)."""

    _mapping: ShardedMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return itertools.chain.from_iterable(shard.items() for shard in self._mapping.shards())


class _Values(ValuesView[V]):
    _mapping: ShardedMap[object, V]

    def __iter__(self) -> Iterator[V]:
        return itertools.chain.from_iterable(shard.values() for shard in self._mapping.shards())
