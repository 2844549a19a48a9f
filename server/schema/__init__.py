"""Assembles the GraphQL schema from one module per domain, with its protective extensions.

Limits run at validation, before any resolver: depth, aliases (fragment spreads counted since
strawberry 0.315.7), tokens, and a complexity estimate. Introspection is off unless a setting turns
it on. Every root field names the permission it needs (``security.roles.requires``); a test asserts
that none is missing.
"""

from __future__ import annotations

import strawberry
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from graphql.validation import NoSchemaIntrospectionCustomRule

from server.errors import DmsErrors
from server.metrics import OperationMetrics
from server.schema.feeder import FeederQuery
from server.settings import Settings


@strawberry.type
class Query(FeederQuery):
    pass


def build_schema(settings: Settings) -> strawberry.Schema:
    extensions: list[object] = [
        OperationMetrics(),
        DmsErrors(),
        ParserCache(maxsize=256),
        ValidationCache(maxsize=256),
        MaxTokensLimiter(max_token_count=settings.max_tokens),
        QueryDepthLimiter(max_depth=settings.max_query_depth),
        MaxAliasesLimiter(max_alias_count=settings.max_aliases),
    ]
    if not settings.introspection:
        extensions.append(AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return strawberry.Schema(query=Query, extensions=extensions)  # type: ignore[arg-type]
