"""Request limits: a per-identity token-bucket rate limiter and GraphQL query-shape measures.

The GraphQL surface is also bounded by Strawberry's own extensions (``strawberry.extensions``):
``QueryDepthLimiter(max_depth=...)``, ``MaxAliasesLimiter(max_alias_count=...)`` (counts aliases in
fragment spreads since 0.315.7) and ``MaxTokensLimiter(max_token_count=...)`` (a parser option, so a
huge document is refused before it is parsed in full). Strawberry has no cost limiter;
:func:`shape_rule` gives a graphql-core validation rule bounding the number of fields a document
selects (with fragments expanded), for ``strawberry.extensions.AddValidationRules([...])``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)

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
    fragment spread twice counts twice)."""

    depth: int = 0
    aliases: int = 0
    fields: int = 0


def query_shape(document: DocumentNode, operation_name: str | None = None) -> QueryShape:
    """The shape of the named operation (or, without a name, the largest of each measure across the
    document's operations). Fragment cycles count as nothing (validation refuses them anyway)."""
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
        depth = aliases = count = 0
        for node in sel.selections if sel is not None else ():
            if isinstance(node, FieldNode):
                inner = of_selection_set(node.selection_set)
                depth = max(depth, 1 + inner.depth)
                aliases += inner.aliases + (1 if node.alias is not None else 0)
                count += 1 + inner.fields
            elif isinstance(node, InlineFragmentNode):
                inner = of_selection_set(node.selection_set)
                depth, aliases, count = max(depth, inner.depth), aliases + inner.aliases, count + inner.fields
            elif isinstance(node, FragmentSpreadNode):
                inner = of_fragment(node.name.value)
                depth, aliases, count = max(depth, inner.depth), aliases + inner.aliases, count + inner.fields
        return QueryShape(depth, aliases, count)

    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        ops = [o for o in ops if o.name is not None and o.name.value == operation_name]
    shapes = [of_selection_set(o.selection_set) for o in ops]
    return QueryShape(
        depth=max((s.depth for s in shapes), default=0),
        aliases=max((s.aliases for s in shapes), default=0),
        fields=max((s.fields for s in shapes), default=0),
    )


def shape_rule(*, max_fields: int, max_depth: int | None = None,
               max_aliases: int | None = None) -> type[ValidationRule]:
    """A graphql-core validation rule refusing documents beyond the limits (``QUERY_TOO_COMPLEX``)."""

    class QueryShapeRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            shape = query_shape(context.document)
            problems = []
            if shape.fields > max_fields:
                problems.append(f"{shape.fields} fields selected (limit {max_fields})")
            if max_depth is not None and shape.depth > max_depth:
                problems.append(f"depth {shape.depth} (limit {max_depth})")
            if max_aliases is not None and shape.aliases > max_aliases:
                problems.append(f"{shape.aliases} aliases (limit {max_aliases})")
            if problems:
                message = f"query too complex: {', '.join(problems)}; select fewer fields or page results"
                context.report_error(GraphQLError(message, extensions={"code": "QUERY_TOO_COMPLEX"}))

        def enter_document(self, *args: Any) -> None:
            return None

    return QueryShapeRule
