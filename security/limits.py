"""Request limits: a per-identity token-bucket rate limiter and GraphQL query-shape measures.

The GraphQL surface is also bounded by Strawberry's own extensions (``strawberry.extensions``):
``QueryDepthLimiter(max_depth=...)``, ``MaxAliasesLimiter(max_alias_count=...)`` (counts aliases in
fragment spreads since 0.315.7) and ``MaxTokensLimiter(max_token_count=...)`` (a parser option, so a
huge document is refused before it is parsed in full). Strawberry has no cost limiter;
:func:`shape_rule` gives a graphql-core validation rule bounding the number of fields a document
selects (with fragments expanded), for ``strawberry.extensions.AddValidationRules([...])``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    parse,
    validate,
)
from graphql.validation import (
    ExecutableDefinitionsRule,
    KnownFragmentNamesRule,
    NoFragmentCyclesRule,
    UniqueFragmentNamesRule,
)
from strawberry.extensions import SchemaExtension

from security.errors import RateLimited


class RateLimiter:
    """Token bucket per key (token subject or client address).

    Each key may spend ``per_minute`` requests per minute, refilled continuously, with bursts up to
    ``burst`` (default: ``per_minute``). ``per_minute=0`` turns limiting off. Memory is bounded: a
    key whose bucket has refilled completely carries no state worth keeping and is dropped, and beyond
    ``max_keys`` the least recently seen key is dropped (it then starts again with a full bucket).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        burst: int | None = None,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 0:
            raise ValueError(f"per_minute={per_minute} must be >= 0 (0 turns limiting off)")
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys} must be >= 1")
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else per_minute)
        if per_minute and self.capacity < 1:
            raise ValueError(f"burst={burst} must be >= 1")
        self.rate_per_s = per_minute / 60.0
        self.max_keys = max_keys
        self._clock = clock
        # key -> [tokens, last_seen]; ordered by last_seen (oldest first)
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Spend ``cost`` from ``key``'s bucket or raise :class:`RateLimited` with the wait in seconds."""
        if self.per_minute == 0:
            return
        now = self._clock()
        self._evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = [self.capacity, now]
            self._buckets[key] = bucket
        else:
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.capacity, bucket[0] + elapsed * self.rate_per_s)
            bucket[1] = now
            self._buckets.move_to_end(key)
        if bucket[0] + 1e-9 >= cost:  # tolerate float rounding in the refill
            bucket[0] = max(0.0, bucket[0] - cost)
            return
        raise RateLimited((cost - bucket[0]) / self.rate_per_s)

    def _evict_idle(self, now: float) -> None:
        # Oldest first: a bucket that has refilled completely by now can be forgotten without changing
        # any decision. Amortised O(1): each key is evicted at most once per insertion.
        while self._buckets:
            key, (tokens, last) = next(iter(self._buckets.items()))
            if tokens + (now - last) * self.rate_per_s < self.capacity:
                break
            del self._buckets[key]


# --- query shape -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """``depth``: deepest field nesting; ``aliases``/``fields``: counts with fragments expanded (a
    fragment spread twice counts twice); ``selections``: every selection with fragments expanded
    (fields, fragment spreads and inline fragments), the number of nodes a validator that expands
    fragments walks."""

    depth: int = 0
    aliases: int = 0
    fields: int = 0
    selections: int = 0


def query_shape(document: DocumentNode, operation_name: str | None = None, *,
                include_fragments: bool = False) -> QueryShape:
    """The shape of the named operation (or, without a name, the largest of each measure across the
    document's operations, and with ``include_fragments`` across its fragment definitions too, which
    validation walks whether an operation uses them or not).

    Linear in the size of the document: each fragment is measured once and its measures reused at
    every spread, so a document whose fragments spread each other exponentially is measured without
    being expanded. Fragment cycles and unknown fragments count as nothing (see
    :func:`fragment_faults`)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    memo: dict[str, QueryShape] = {}
    visiting: set[str] = set()

    def of_fragment(name: str) -> QueryShape:
        if name in memo:
            return memo[name]
        frag = fragments.get(name)
        if frag is None or name in visiting:
            return QueryShape()
        visiting.add(name)
        shape = of_selection_set(frag.selection_set)
        visiting.discard(name)
        memo[name] = shape
        return shape

    def of_selection_set(sel: SelectionSetNode | None) -> QueryShape:
        depth = aliases = count = nodes = 0
        for node in sel.selections if sel is not None else ():
            if isinstance(node, FieldNode):
                inner = of_selection_set(node.selection_set)
                # Introspection (``__schema``, ``__type``...) adds no depth, as in strawberry's
                # QueryDepthLimiter: GraphiQL's schema query nests TypeRef 8 deep. Its fields still count.
                if not node.name.value.startswith("__"):
                    depth = max(depth, 1 + inner.depth)
                aliases += inner.aliases + (1 if node.alias is not None else 0)
                count += 1 + inner.fields
            elif isinstance(node, InlineFragmentNode):
                inner = of_selection_set(node.selection_set)
                depth, aliases, count = max(depth, inner.depth), aliases + inner.aliases, count + inner.fields
            elif isinstance(node, FragmentSpreadNode):
                inner = of_fragment(node.name.value)
                depth, aliases, count = max(depth, inner.depth), aliases + inner.aliases, count + inner.fields
            else:  # pragma: no cover - graphql-core has no other selection kind
                continue
            nodes += 1 + inner.selections
        return QueryShape(depth, aliases, count, nodes)

    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        ops = [o for o in ops if o.name is not None and o.name.value == operation_name]
    shapes = [of_selection_set(o.selection_set) for o in ops]
    if include_fragments and operation_name is None:
        shapes += [of_fragment(name) for name in fragments]
    return QueryShape(
        depth=max((s.depth for s in shapes), default=0),
        aliases=max((s.aliases for s in shapes), default=0),
        fields=max((s.fields for s in shapes), default=0),
        selections=max((s.selections for s in shapes), default=0),
    )


def fragment_faults(document: DocumentNode) -> list[str]:
    """Spreads of unknown fragments, and fragment cycles, found in time linear in the document.

    Validation refuses both (``KnownFragmentNamesRule``, ``NoFragmentCyclesRule``), but limiters that
    expand fragments run beside those rules and may fail on them first (strawberry's depth limiter
    raises ``KeyError`` on an unknown fragment)."""
    spreads: dict[str, list[str]] = {}
    faults: list[str] = []
    fragments: set[str] = set()
    for d in document.definitions:
        if isinstance(d, FragmentDefinitionNode):
            if d.name.value in fragments:
                faults.append(f"fragment {d.name.value!r} is defined twice")
            fragments.add(d.name.value)

    def collect(sel: SelectionSetNode | None, into: list[str]) -> None:
        stack = [sel]
        while stack:
            current = stack.pop()
            for node in current.selections if current is not None else ():
                if isinstance(node, FragmentSpreadNode):
                    into.append(node.name.value)
                elif isinstance(node, FieldNode | InlineFragmentNode):
                    stack.append(node.selection_set)

    used: list[str] = []
    for d in document.definitions:
        if isinstance(d, FragmentDefinitionNode):
            collect(d.selection_set, spreads.setdefault(d.name.value, []))
        elif isinstance(d, OperationDefinitionNode):
            collect(d.selection_set, used)
    unknown = sorted({n for n in [*used, *(t for ts in spreads.values() for t in ts)] if n not in fragments})
    faults += [f"unknown fragment {n!r}" for n in unknown]
    # Iterative three-colour depth-first search: no recursion, so no RecursionError on long chains.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in spreads:
        if state.get(root):
            continue
        path: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while path:
            name, i = path[-1]
            targets = [t for t in spreads.get(name, ()) if t in fragments]
            if i < len(targets):
                path[-1] = (name, i + 1)
                nxt = targets[i]
                if state.get(nxt) == 1:
                    faults.append(f"fragment {nxt!r} spreads itself")
                    state[nxt] = 2  # report each cycle once
                elif not state.get(nxt):
                    state[nxt] = 1
                    path.append((nxt, 0))
            else:
                state[name] = 2
                path.pop()
    return faults


def _problems(shape: QueryShape, *, max_fields: int, max_depth: int | None,
              max_aliases: int | None) -> list[str]:
    problems = []
    if shape.fields > max_fields:
        problems.append(f"{shape.fields} fields selected (limit {max_fields})")
    elif shape.selections > max_fields:
        problems.append(f"{shape.selections} selections with fragments expanded (limit {max_fields})")
    if max_depth is not None and shape.depth > max_depth:
        problems.append(f"depth {shape.depth} (limit {max_depth})")
    if max_aliases is not None and shape.aliases > max_aliases:
        problems.append(f"{shape.aliases} aliases (limit {max_aliases})")
    return problems


@functools.lru_cache(maxsize=64)
def shape_rule(*, max_fields: int, max_depth: int | None = None,
               max_aliases: int | None = None) -> type[ValidationRule]:
    """A graphql-core validation rule refusing documents beyond the limits (``QUERY_TOO_COMPLEX``).

    ``max_depth`` counts fields from the operation's root (``{ feeders { id } }`` has depth 2). The
    same limits give the same class, so validation caches keyed by the rules keep hitting."""

    class QueryShapeRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            shape = query_shape(context.document, include_fragments=True)
            problems = _problems(shape, max_fields=max_fields, max_depth=max_depth, max_aliases=max_aliases)
            if problems:
                message = f"query too complex: {', '.join(problems)}; select fewer fields or page results"
                context.report_error(GraphQLError(message, extensions={"code": "QUERY_TOO_COMPLEX"}))

        def enter_document(self, *args: Any) -> None:
            return None

    return QueryShapeRule


_LINEAR_RULES: tuple[type[ASTValidationRule], ...] = (
    ExecutableDefinitionsRule, KnownFragmentNamesRule, NoFragmentCyclesRule, UniqueFragmentNamesRule,
)


@functools.lru_cache(maxsize=256)
def _checked(schema: GraphQLSchema, query: str, parse_options: tuple[tuple[str, Any], ...],
             rules: tuple[type[ASTValidationRule], ...], limits: tuple[int, int | None, int | None]
             ) -> tuple[DocumentNode | None, list[GraphQLError]]:
    """Parse and validate ``query`` (cached, thread-safe, run in a worker thread)."""
    from strawberry.schema.schema import validate_document  # adds strawberry's own two rules

    try:
        document = parse(query, **dict(parse_options))
    except GraphQLError as error:
        return None, [error]
    max_fields, depth, max_aliases = limits
    shape = query_shape(document, include_fragments=True)
    if _problems(shape, max_fields=max_fields, max_depth=depth, max_aliases=max_aliases) or fragment_faults(document):
        # Refused in linear time: only rules that do not expand fragments see this document.
        rule = shape_rule(max_fields=max_fields, max_depth=depth, max_aliases=max_aliases)
        return document, validate(schema, document, (*_LINEAR_RULES, rule))
    return document, validate_document(schema, document, rules)


class DocumentGuard(SchemaExtension):
    """Parses and validates every document in a worker thread, refusing over-limit ones in linear time.

    Two costs used to fall on the event loop that serves every request, ``/healthz`` included:

    * strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` (and graphql-core's rules) expand
      every fragment spread as they walk, so 20 fragments that each spread the next twice (833 bytes)
      cost 2**20 visits: 12 s before the document was refused. The guard measures the document with
      :func:`query_shape` (each fragment measured once) and checks its fragment graph with
      :func:`fragment_faults`; a document over a limit, or with broken fragments, is validated only by
      rules that are linear in its size (``QUERY_TOO_COMPLEX``), so the expanding rules never see it;
    * documents within the limits still cost up to seconds to validate (graphql-core's
      overlapping-fields rule is quadratic in fields of one name: 480 ``feeders { id }`` under the
      token limit take 1-2 s) and up to 0.4 s to lex (a 1 MB string literal is one token). Both now
      run in a worker thread (``asyncio.to_thread``), so the loop keeps serving meanwhile.

    It takes over the roles of strawberry's ``ParserCache`` and ``ValidationCache`` (results are cached
    by query text) and must replace them: they parse and validate on the loop, and ``ParserCache``
    raises syntax errors out of its hook, which over WebSocket ends the operation with a logged
    traceback instead of an error. A syntax error is reported as graphql-core reports it.
    ``max_depth`` follows ``QueryDepthLimiter`` (``{ feeders { id } }`` has depth 1).
    """

    def __init__(self, *, max_fields: int, max_depth: int | None = None, max_aliases: int | None = None) -> None:
        super().__init__()
        # shape_rule counts depth from the root, QueryDepthLimiter below the root field: one more.
        self.limits = (max_fields, None if max_depth is None else max_depth + 1, max_aliases)
        self._errors: list[GraphQLError] | None = None

    async def on_parse(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        if ctx.graphql_document is None and ctx.query:
            options = tuple(sorted(ctx.parse_options.items()))
            document, errors = await asyncio.to_thread(
                _checked, ctx.schema._schema, ctx.query, options, tuple(ctx.validation_rules), self.limits)
            if document is None:
                # A stand-in keeps strawberry from parsing the text again on the loop; the syntax error
                # is reported as this operation's only validation error (see on_validate).
                document = _STAND_IN
            ctx.graphql_document, self._errors = document, errors
        yield

    def on_validate(self) -> Iterator[None]:
        if self._errors is not None:
            # Validation already ran in the worker thread: strawberry skips it when errors are set.
            self.execution_context.pre_execution_errors = list(self._errors)
        yield


_STAND_IN = parse("{ __typename }")
