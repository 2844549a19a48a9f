"""The one place where errors become GraphQL errors.

A :class:`~graph_schema.errors.DmsError` keeps its message (written to be shown to clients) and
gets ``extensions.code``; GraphQL's own parse/validation errors get ``GRAPHQL_VALIDATION_FAILED``;
anything else is an internal error: masked to the client as ``INTERNAL`` with a correlation id,
and logged in full with the same id.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

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


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def strip_suggestions(message: str) -> str:
    """graphql-core's "Did you mean 'feeders'?" names fields, arguments, types and enum values of the
    schema: with introspection off, a client could map the schema by misspelling names."""
    return _SUGGESTION.sub("", message)


def map_error(error: GraphQLError, *, hide_suggestions: bool = False) -> GraphQLError:
    cause = _root_cause(error)
    if cause is not None and not isinstance(cause, DmsError) and error.path is None \
            and isinstance(error.original_error, GraphQLError):
        # A variable that graphql-core could not coerce (an unknown enum value: its KeyError is
        # chained under the GraphQLError that says so): the client's mistake, not an internal error.
        cause = None
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
        message = strip_suggestions(error.message) if hide_suggestions else error.message
        if error.extensions and "code" in error.extensions and message == error.message:
            return error
        return GraphQLError(
            message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=error.extensions if error.extensions and "code" in error.extensions
            else {"code": "GRAPHQL_VALIDATION_FAILED"},
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
    """Maps every error of an operation (queries, mutations and each subscription frame).

    Suggestions ("Did you mean ...?") are removed unless the GraphQL context says introspection is
    on (``context["introspection"] is True``): hidden by default."""

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        context = getattr(self.execution_context, "context", None)
        hide = not (isinstance(context, dict) and context.get("introspection") is True)
        mapped = [map_error(e, hide_suggestions=hide) for e in errors]
        denied = [m for m in mapped if (m.extensions or {}).get("code") == "FORBIDDEN"]
        if denied and isinstance(context, dict):
            _audit_denials(context, denied)
        return mapped


def _audit_denials(context: dict[str, Any], denied: list[GraphQLError]) -> None:
    """``ACCESS_DENIED`` for fields refused by role or feeder scope, through the services' throttle
    (``server.auth.AuditThrottle``: one entry per subject and window, then a count), so a client
    looping on a forbidden call cannot flood the audit log."""
    throttle = getattr(context.get("services"), "audit_throttle", None)
    principal = context.get("principal")
    if throttle is None or principal is None:
        return
    fields = sorted({".".join(str(p) for p in (e.path or ())) or "operation" for e in denied})
    throttle.note_nowait("ACCESS_DENIED", key=f"sub:{principal.sub}", actor=principal.sub,
                         roles=[getattr(r, "value", str(r)) for r in principal.roles],
                         target=",".join(fields)[:200], source=str(context.get("source", "")),
                         outcome="DENIED", detail={"fields": fields[:20]})
