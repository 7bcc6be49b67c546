"""ShardedMap against a dict: the same answers to every read after any sequence of writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exporter.shards import SHARDS, ShardedMap

keys = st.text(max_size=6)


@given(st.lists(st.tuples(keys, st.one_of(st.none(), st.integers())), max_size=300), st.lists(keys, max_size=20))
def test_a_sharded_map_reads_as_the_dict_of_the_same_writes(
    writes: list[tuple[str, int | None]], probes: list[str]
) -> None:
    """Writes (None: a pop), with a copy made shard by shard halfway, as the primary's snapshot is made."""
    sharded: ShardedMap[str, int] = ShardedMap()
    plain: dict[str, int] = {}
    for number, (key, value) in enumerate(writes):
        if number == len(writes) // 2:
            sharded = ShardedMap.of_shards([shard.copy() for shard in sharded.shards()])
        if value is None:
            assert sharded.pop(key) == plain.pop(key, None)
        else:
            sharded[key] = value
            plain[key] = value
    assert len(sharded) == len(plain)
    assert sharded == plain and dict(sharded) == plain
    assert sorted(sharded) == sorted(plain)
    assert sorted(sharded.items()) == sorted(plain.items())
    assert sorted(sharded.values()) == sorted(plain.values())
    assert len(sharded.items()) == len(plain) and (next(iter(plain.items()), ("", 0)) in sharded.items()) == bool(plain)
    for key in [*probes, *plain]:
        assert (key in sharded) == (key in plain)
        assert sharded.get(key) == plain.get(key)
        assert sharded.get(key, -1) == plain.get(key, -1)
        if key in plain:
            assert sharded[key] == plain[key]


def test_the_entries_are_spread_so_no_table_holds_more_than_a_share() -> None:
    sharded: ShardedMap[str, int] = ShardedMap()
    for number in range(100 * SHARDS):
        sharded[str(number)] = number
    sizes = [len(shard) for shard in sharded.shards()]
    assert sum(sizes) == 100 * SHARDS and max(sizes) < 200, "a rebuild moves about a 256th of the entries"
