"""A variable with an unknown enum value is the client's mistake: answered with graphql-core's
message (suggestions stripped), never as an INTERNAL error with a correlation id."""

from __future__ import annotations

import asyncio
from enum import Enum

import strawberry

from server.errors import DmsErrors


@strawberry.enum
class Colour(Enum):
    RED = "RED"


@strawberry.type
class Query:
    @strawberry.field
    def echo(self, colour: Colour) -> str:
        return colour.value


def test_an_unknown_enum_value_in_variables_is_not_an_internal_error() -> None:
    schema = strawberry.Schema(query=Query, extensions=[DmsErrors])
    result = asyncio.run(schema.execute("query($c: Colour!) { echo(colour: $c) }", variable_values={"c": "REDD"},
                                        context_value={}))
    assert result.errors is not None
    err = result.errors[0]
    assert err.extensions == {"code": "GRAPHQL_VALIDATION_FAILED"}, err.extensions
    assert "REDD" in err.message and "Did you mean" not in err.message
