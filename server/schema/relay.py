"""Relay cursor connections for unbounded histories (audit log, events, outages, controls).

Cursors are opaque (base64 of ``seq:<n>``) over the store's per-label ``seq``, so paging is stable
while new records arrive. ``first`` is bounded: clients page, they never pull a whole history.

``PageInfo`` follows the Relay cursor connections specification: ``hasNextPage``/``endCursor`` for
paging forward, ``hasPreviousPage``/``startCursor`` beside them. Paging is forward only (``first``
and ``after``), where the specification lets ``hasPreviousPage`` answer whether records exist
before ``after``: every cursor this server hands out names a record, so it is true exactly when
``after`` was given.
"""

from __future__ import annotations

import base64
import binascii
from typing import Generic, TypeVar

import strawberry

from graph_schema.errors import BadInput

T = TypeVar("T")

MAX_PAGE = 500


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        kind, _, value = text.partition(":")
        if kind != "seq":
            raise ValueError(kind)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadInput(f"cursor {cursor!r} is not valid; pass an endCursor from a previous page") from None


def page_size(first: int | None, default: int = 50) -> int:
    n = default if first is None else first
    if not 1 <= n <= MAX_PAGE:
        raise BadInput(f"first={n} is out of range; ask for 1 to {MAX_PAGE} items and page with after")
    return n


@strawberry.type(description="Relay PageInfo")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool = strawberry.field(description="True when the page was asked for with after")
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo


def connection(items: list[tuple[int, T]], limit: int, *, after: str | None) -> Connection[T]:
    """``items`` are (seq, node) pairs, fetched with ``limit + 1`` to learn whether more exist;
    ``after`` is the cursor the page was asked for with (None: the first page)."""
    more = len(items) > limit
    items = items[:limit]
    edges = [Edge(cursor=encode_cursor(seq), node=node) for seq, node in items]
    return Connection(edges=edges, page_info=PageInfo(
        has_next_page=more, has_previous_page=after is not None,
        start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None))
