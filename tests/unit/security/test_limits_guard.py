"""DocumentGuard: any document under the size limit is accepted or refused in bounded time, and
fragment bombs are refused in time linear in their size (they used to take 12 s of the event loop).

The schema is the server's own (``server.schema.build_schema``), executed without a principal: every
field then refuses with UNAUTHENTICATED, so the time measured is parsing, validation and refusal."""

from __future__ import annotations

import asyncio
import time

import pytest
from graphql import parse
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from security.limits import fragment_faults, query_shape

BOUND_S = 5.0  # generous: a fragment bomb took 12 s before, accepted documents take well under 1 s


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory):
    from server.schema import build_schema
    from server.settings import Settings

    return build_schema(Settings.from_env({}, data_dir=tmp_path_factory.mktemp("guard")))


def bomb(levels: int, leaf: str = "feeders { id }") -> str:
    frags = "\n".join(f"fragment L{i} on Query {{ ...L{i + 1} ...L{i + 1} }}" for i in range(levels))
    return f"query {{ ...L0 }}\n{frags}\nfragment L{levels} on Query {{ {leaf} }}"


def codes(result) -> list[str]:
    return [(e.extensions or {}).get("code") for e in result.errors or []]


def test_fragment_bomb_is_refused_in_linear_time(schema) -> None:
    for levels in (20, 60, 200):
        started = time.perf_counter()
        result = asyncio.run(schema.execute(bomb(levels), context_value={}))
        assert time.perf_counter() - started < 1.0
        # beyond ~150 levels the token limit refuses the document while it is parsed
        assert codes(result) == ["QUERY_TOO_COMPLEX" if levels < 150 else "GRAPHQL_VALIDATION_FAILED"]
        assert result.data is None


def test_broken_fragments_are_refused_with_validation_errors(schema) -> None:
    unknown = asyncio.run(schema.execute("{ ...A }", context_value={}))
    assert codes(unknown) == ["GRAPHQL_VALIDATION_FAILED"] and "Unknown fragment" in unknown.errors[0].message
    cycle = asyncio.run(schema.execute("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
                                       context_value={}))
    assert codes(cycle) == ["GRAPHQL_VALIDATION_FAILED"]


def test_syntax_errors_are_answers_over_execute_and_stream(schema) -> None:
    async def streamed(q: str) -> list:
        return [r async for r in await schema.stream(q, context_value={})]

    for q in ("{", "{" + "feeders {" * 600 + "}" * 601):
        assert codes(asyncio.run(schema.execute(q, context_value={}))) == ["GRAPHQL_VALIDATION_FAILED"]
        (only,) = asyncio.run(streamed(q))
        assert only.errors and "Syntax Error" in only.errors[0].message


def test_fragment_faults() -> None:
    assert fragment_faults(parse("{ ...A } fragment A on Q { x }")) == []
    assert fragment_faults(parse("{ ...B }")) == ["unknown fragment 'B'"]
    assert "fragment 'A' spreads itself" in fragment_faults(parse("{ ...A } fragment A on Q { x ...A }"))
    chain = "\n".join(f"fragment F{i} on Q {{ ...F{i + 1} }}" for i in range(3000))
    assert fragment_faults(parse(f"{{ ...F0 }} {chain} fragment F3000 on Q {{ x }}")) == []  # no recursion


def test_shape_counts_unused_fragments_when_asked() -> None:
    doc = parse("{ a } fragment U on Q { " + " ".join(f"f{i}: x" for i in range(10)) + " }")
    assert query_shape(doc).aliases == 0
    assert query_shape(doc, include_fragments=True).aliases == 10


# -- property: bounded time for any document under the size limit ----------------------------------

_names = st.sampled_from(["feeders", "id", "name", "feeder", "buses", "vmPu", "outages", "x", "__typename"])


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Operations and fragments that spread each other (possibly exponentially, cyclically, or to
    unknown names), with aliases, arguments, nesting and repeated fields."""
    n_frags = draw(st.integers(0, 40))

    def selection(depth: int) -> str:
        parts = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["field", "field", "spread", "inline", "alias"]))
            if kind == "spread" and n_frags:
                parts.append(f"...F{draw(st.integers(0, n_frags))}")
            elif kind == "inline" and depth < 6:
                parts.append(f"... on Query {{ {selection(depth + 1)} }}")
            else:
                name = draw(_names)
                alias = f"a{draw(st.integers(0, 99))}: " if kind == "alias" else ""
                args = '(id: "x")' if draw(st.booleans()) else ""
                sub = f" {{ {selection(depth + 1)} }}" if depth < 6 and draw(st.booleans()) else ""
                repeat = draw(st.sampled_from([1, 1, 1, 50])) if depth == 0 else 1  # repeated fields
                parts.append(f"{alias}{name}{args}{sub}" * repeat)
        return " ".join(parts)

    frags = [f"fragment F{i} on Query {{ {selection(0)} }}" for i in range(n_frags)]
    return f"query Q {{ {selection(0)} }}\n" + "\n".join(frags)


@hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents(), junk=st.sampled_from(["", "{", "}", " fragment", " ...", '"', "#"]))
def test_any_document_is_answered_in_bounded_time(schema, doc: str, junk: str) -> None:
    query = (doc + junk)[:1_000_000]
    started = time.perf_counter()
    result = asyncio.run(schema.execute(query, context_value={}))
    elapsed = time.perf_counter() - started
    assert elapsed < BOUND_S, (elapsed, len(query))
    assert result.errors, "no principal: every document is refused one way or another"
    assert all(c in {"QUERY_TOO_COMPLEX", "GRAPHQL_VALIDATION_FAILED", "UNAUTHENTICATED", "NOT_FOUND",
                     "BAD_INPUT"} for c in codes(result)), codes(result)


def test_graphiql_schema_query_fits_the_default_limits() -> None:
    """Introspection fields add no depth (as in strawberry's QueryDepthLimiter): GraphiQL's own schema
    query nests TypeRef eight deep and was refused QUERY_TOO_COMPLEX, leaving its docs empty."""
    from graphql import get_introspection_query

    from security.limits import query_shape
    from server.settings import Settings

    doc = parse(get_introspection_query(descriptions=True, specified_by_url=True, directive_is_repeatable=True,
                                        schema_description=True, input_value_deprecation=True))
    shape = query_shape(doc)
    limits = Settings.from_env({})
    assert shape.depth <= limits.max_query_depth and shape.fields <= limits.max_complexity, shape
    deep = parse("{ " + "a { " * 20 + "id" + " }" * 21)
    assert query_shape(deep).depth == 21  # ordinary fields still count
