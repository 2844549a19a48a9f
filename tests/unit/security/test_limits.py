"""Rate limiter (token bucket, injectable clock, bounded memory) and query-shape measures."""

from __future__ import annotations

import math

import pytest
from graphql import build_schema, parse, validate

from security.errors import RateLimited
from security.limits import QueryShape, RateLimiter, query_shape, shape_rule


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_budget_then_refused_with_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(60, clock=clock)  # one per second, burst 60
    for _ in range(60):
        rl.check("alice")
    with pytest.raises(RateLimited) as info:
        rl.check("alice")
    assert info.value.code == "RATE_LIMITED"
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert info.value.extensions() == {"code": "RATE_LIMITED", "retryAfterS": 1}
    clock.t += 1.0
    rl.check("alice")  # refilled one token
    with pytest.raises(RateLimited):
        rl.check("alice")


def test_keys_are_independent() -> None:
    clock = Clock()
    rl = RateLimiter(2, clock=clock)
    rl.check("a")
    rl.check("a")
    with pytest.raises(RateLimited) as info:
        rl.check("a")
    assert info.value.retry_after_s == pytest.approx(30.0)
    assert math.ceil(info.value.retry_after_s) == 30
    rl.check("b")


def test_burst_smaller_than_budget() -> None:
    clock = Clock()
    rl = RateLimiter(600, burst=5, clock=clock)
    for _ in range(5):
        rl.check("k")
    with pytest.raises(RateLimited) as info:
        rl.check("k")
    assert info.value.retry_after_s == pytest.approx(0.1)
    clock.t += 0.1
    rl.check("k")


def test_refill_is_capped_at_capacity() -> None:
    clock = Clock()
    rl = RateLimiter(3, clock=clock)
    rl.check("k")
    clock.t += 3600
    for _ in range(3):
        rl.check("k")
    with pytest.raises(RateLimited):
        rl.check("k")


def test_zero_turns_limiting_off() -> None:
    rl = RateLimiter(0, clock=Clock())
    for _ in range(10_000):
        rl.check("k")
    assert len(rl) == 0


def test_idle_keys_are_evicted() -> None:
    clock = Clock()
    rl = RateLimiter(60, clock=clock)
    for i in range(100):
        rl.check(f"ip{i}")
    assert len(rl) == 100
    clock.t += 0.5  # not refilled yet
    rl.check("other")
    assert len(rl) == 101
    clock.t += 1.0  # every old bucket refilled its single token: forgotten
    rl.check("other")
    assert len(rl) == 1


def test_memory_is_bounded() -> None:
    clock = Clock()
    rl = RateLimiter(1, max_keys=50, clock=clock)
    for i in range(1000):
        rl.check(f"ip{i}")
    assert len(rl) == 50


def test_recently_seen_key_survives_lru_eviction() -> None:
    clock = Clock()
    rl = RateLimiter(1, max_keys=3, clock=clock)
    rl.check("a")
    rl.check("b")
    rl.check("c")
    with pytest.raises(RateLimited):
        rl.check("a")  # touches a: now most recent
    rl.check("d")  # evicts b, the least recently seen
    with pytest.raises(RateLimited):
        rl.check("a")  # a still remembered: still limited


@pytest.mark.parametrize("kwargs", [{"per_minute": -1}, {"per_minute": 10, "burst": 0},
                                    {"per_minute": 10, "max_keys": 0}])
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


# --- query shape -------------------------------------------------------------------------------


def test_shape_simple() -> None:
    doc = parse("{ feeders { id name buses { id vmPu } } }")
    assert query_shape(doc) == QueryShape(depth=3, aliases=0, fields=6, selections=6)


def test_shape_counts_aliases_in_fragments_per_spread() -> None:
    doc = parse("""
        query Q { a: feeder(id: "1") { ...F } b: feeder(id: "2") { ...F } }
        fragment F on Feeder { x: id y: name buses { ... on Bus { z: id } } }
    """)
    shape = query_shape(doc)
    assert shape.aliases == 2 + 2 * 3
    assert shape.depth == 3
    assert shape.fields == 2 + 2 * 4


def test_shape_fragment_bomb_is_counted_not_expanded() -> None:
    frags = "\n".join(f"fragment F{i} on T {{ ...F{i + 1} ...F{i + 1} }}" for i in range(40))
    doc = parse("{ t { ...F0 } }\n" + frags + "\nfragment F40 on T { a: x }")
    shape = query_shape(doc)
    assert shape.aliases == 2**40 and shape.fields == 1 + 2**40


def test_shape_fragment_cycle_terminates() -> None:
    doc = parse("{ t { ...A } } fragment A on T { x ...B } fragment B on T { y ...A }")
    assert query_shape(doc).fields >= 3


def test_shape_by_operation_name() -> None:
    doc = parse("query Small { a } query Big { a { b { c } } }")
    assert query_shape(doc, "Small").depth == 1
    assert query_shape(doc, "Big").depth == 3
    assert query_shape(doc).depth == 3
    assert query_shape(doc, "Missing") == QueryShape()


def test_shape_rule_in_validation() -> None:
    schema = build_schema("type Query { a: Int b: Int c: Int }")
    rule = shape_rule(max_fields=2, max_aliases=1)
    assert validate(schema, parse("{ a b }"), [rule]) == []
    errors = validate(schema, parse("{ a b x: c y: c }"), [rule])
    assert len(errors) == 1
    assert errors[0].extensions == {"code": "QUERY_TOO_COMPLEX"}
    assert "4 fields" in errors[0].message and "2 aliases" in errors[0].message
