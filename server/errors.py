"""The one place where errors become GraphQL errors.

A :class:`~graph_schema.errors.DmsError` keeps its message (written to be shown to clients) and
gets ``extensions.code``; GraphQL's own parse/validation errors get ``GRAPHQL_VALIDATION_FAILED``;
anything else is an internal error: masked to the client as ``INTERNAL`` with a correlation id,
and logged in full with the same id.
"""

from __future__ import annotations

import logging
import uuid

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from graph_schema.errors import DmsError

log = logging.getLogger("dms.errors")


def _root_cause(error: GraphQLError) -> BaseException | None:
    cause: BaseException | None = error.original_error
    # Strawberry/graphql-core may wrap the resolver's exception once more.
    while isinstance(cause, GraphQLError) and cause.original_error is not None:
        cause = cause.original_error
    return cause


def map_error(error: GraphQLError) -> GraphQLError:
    cause = _root_cause(error)
    if isinstance(cause, DmsError):
        return GraphQLError(
            cause.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=cause.extensions(),
        )
    if cause is None:
        if error.extensions and "code" in error.extensions:
            return error
        return GraphQLError(
            error.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={"code": "GRAPHQL_VALIDATION_FAILED"},
        )
    correlation_id = uuid.uuid4().hex[:16]
    log.error("internal error %s at %s", correlation_id, error.path, exc_info=cause)
    return GraphQLError(
        f"internal error; quote correlation id {correlation_id} to your administrator",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL", "correlationId": correlation_id},
    )


class DmsErrors(MaskErrors):
    """Maps every error of an operation (queries, mutations and each subscription frame)."""

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [map_error(e) for e in errors]
