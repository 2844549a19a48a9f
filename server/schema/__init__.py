"""Assembles the GraphQL schema from one module per domain, with its protective extensions.

Limits run at validation, before any resolver: depth, aliases (fragment spreads counted since
strawberry 0.315.7), tokens, and a complexity estimate. :class:`security.limits.DocumentGuard` comes
first: it parses and validates each document (cached by text) in a worker thread and refuses one over
the limits in time linear in its size, before any rule that expands fragments sees it. It takes the
place of strawberry's ``ParserCache`` and ``ValidationCache``, which would parse and validate again on
the event loop, so the schema lists neither. Introspection is off unless a setting turns
it on. Every root field names the permission it needs (``security.roles.requires``); a test asserts
that none is missing.
"""

from __future__ import annotations

from typing import Any

import strawberry
from graphql.error import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)

from security.limits import DocumentGuard, shape_rule
from server.errors import DmsErrors
from server.metrics import OperationMetrics
from server.schema.audit import AuditQuery
from server.schema.control import ControlMutation
from server.schema.fdir import FdirMutation, FdirQuery
from server.schema.feeder import FeederQuery
from server.schema.history import HistoryQuery
from server.schema.outages import OutageQuery, OutageSubscription
from server.schema.realtime import RealtimeMutation, RealtimeQuery, RealtimeSubscription
from server.schema.reports import ReportMutation, ReportQuery
from server.schema.studies import StudyMutation, StudyQuery, StudySubscription
from server.settings import Settings


@strawberry.type
class Query(FeederQuery, AuditQuery, RealtimeQuery, OutageQuery, FdirQuery, HistoryQuery, ReportQuery,
            StudyQuery):
    pass


@strawberry.type
class Mutation(ControlMutation, FdirMutation, RealtimeMutation, ReportMutation,
               StudyMutation):
    pass


@strawberry.type
class Subscription(RealtimeSubscription, OutageSubscription,
                   StudySubscription):
    pass


class DmsSchema(strawberry.Schema):
    """Leaves error logging to ``server/errors.py``: expected refusals (``DmsError``: not found,
    forbidden, ...) and query validation errors are answers, not server faults, so they are not
    logged with tracebacks; internal errors are logged there in full with a correlation id."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        return None


def build_schema(settings: Settings) -> strawberry.Schema:
    # Factories, not instances: Strawberry builds fresh extensions for every operation.
    rules: list[Any] = [shape_rule(max_fields=settings.max_complexity)]
    if not settings.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[Any] = [
        lambda: DocumentGuard(max_fields=settings.max_complexity, max_depth=settings.max_query_depth,
                              max_aliases=settings.max_aliases),
        OperationMetrics,
        DmsErrors,
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: QueryDepthLimiter(max_depth=settings.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
        lambda: AddValidationRules(rules),
    ]
    return DmsSchema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions)  # type: ignore[arg-type]
