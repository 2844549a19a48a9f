"""IEC 62351-8 roles: the full role x permission matrix, feeder scope, the Strawberry permission
classes and the deny-by-default schema check."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry

from security.errors import Forbidden, Unauthenticated
from security.roles import (
    PERMISSIONS,
    Permission,
    Role,
    allowed,
    assert_every_field_guarded,
    authorize,
    feeder_in_scope,
    permissions_of,
    requires,
)
from security.tokens import Principal

P = Permission

# Written out independently of security/roles.py: a change to the table must change this too.
EXPECTED: dict[Role, set[Permission]] = {
    Role.VIEWER: {P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED, P.READ_ENERGY_USAGE},
    Role.OPERATOR: {P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED, P.READ_ENERGY_USAGE,
                    P.CONTROL, P.TAG, P.APPROVE_PLAN, P.WHAT_IF, P.SET_MODE, P.ACK_ALARMS},
    Role.ENGINEER: {P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED, P.READ_ENERGY_USAGE,
                    P.CHANGE_SETTINGS, P.CHANGE_MODEL, P.WHAT_IF, P.SET_MODE},
    Role.INSTALLER: {P.READ_GRID, P.CHANGE_MODEL},
    Role.SECADM: {P.MANAGE_ROLES, P.CHANGE_SECURITY_SETTINGS},
    Role.SECAUD: {P.READ_AUDIT},
    Role.RBACMNT: {P.MANAGE_ROLES},
    Role.CUSTOMER: {P.READ_PUBLIC_FEED, P.DEMAND_RESPONSE_ENROLL, P.READ_ENERGY_USAGE},
    Role.SUPERVISOR: {P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED,
                      P.READ_ENERGY_USAGE, P.CONTROL, P.TAG, P.APPROVE_PLAN, P.WHAT_IF, P.SET_MODE, P.ACK_ALARMS,
                      P.OVERRIDE_TAG},
    Role.PLANNER: {P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED, P.READ_ENERGY_USAGE,
                   P.WHAT_IF, P.RUN_STUDIES},
}


def principal(*roles: Role, feeders: set[str] | None = None) -> Principal:
    scope = None if feeders is None else frozenset(feeders)
    return Principal(sub="u1", roles=frozenset(roles), feeders=scope, token_id="t1",
                     expires_at=datetime(2030, 1, 1, tzinfo=UTC))


def test_table_covers_every_role() -> None:
    assert set(PERMISSIONS) == set(Role)
    assert set(EXPECTED) == set(Role)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_matrix(role: Role, permission: Permission) -> None:
    want = permission in EXPECTED[role]
    assert (permission in PERMISSIONS[role]) is want
    p = principal(role)
    assert allowed(p, permission) is want
    if want:
        authorize(p, permission)
    else:
        with pytest.raises(Forbidden) as info:
            authorize(p, permission)
        assert info.value.code == "FORBIDDEN"


def test_separation_of_duties() -> None:
    assert P.CONTROL not in PERMISSIONS[Role.ENGINEER]
    assert P.READ_AUDIT not in PERMISSIONS[Role.SECADM]
    for role in (Role.SECAUD, Role.SECADM, Role.RBACMNT, Role.CUSTOMER, Role.VIEWER, Role.INSTALLER):
        assert not PERMISSIONS[role] & {P.CONTROL, P.TAG, P.APPROVE_PLAN}


def test_roles_combine() -> None:
    p = principal(Role.ENGINEER, Role.SECAUD)
    assert permissions_of(p.roles) == frozenset(EXPECTED[Role.ENGINEER] | EXPECTED[Role.SECAUD])
    assert permissions_of([]) == frozenset()


def test_no_principal_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        authorize(None, P.READ_GRID)
    assert allowed(None, P.READ_GRID) is False


def test_feeder_scope() -> None:
    scoped = principal(Role.OPERATOR, feeders={"f1", "f2"})
    authorize(scoped, P.CONTROL, feeder_id="f1")
    assert allowed(scoped, P.CONTROL, feeder_id="f2")
    with pytest.raises(Forbidden) as info:
        authorize(scoped, P.CONTROL, feeder_id="f3")
    # names neither the principal's feeders nor its roles
    assert "f1" not in str(info.value) and "f2" not in str(info.value) and "OPERATOR" not in str(info.value)
    assert not allowed(scoped, P.CONTROL, feeder_id="f3")
    # a scope never widens the roles
    assert not allowed(scoped, P.CHANGE_MODEL, feeder_id="f1")
    # no feeder named: the role decides; lists must be filtered with feeder_in_scope
    authorize(scoped, P.READ_GRID)
    assert feeder_in_scope(scoped, "f1") and not feeder_in_scope(scoped, "f3")
    unscoped = principal(Role.OPERATOR)
    authorize(unscoped, P.CONTROL, feeder_id="anything")
    assert feeder_in_scope(unscoped, "anything")


def test_empty_scope_means_no_feeder() -> None:
    nothing = principal(Role.VIEWER, feeders=set())
    assert not allowed(nothing, P.READ_GRID, feeder_id="f1")


# --- Strawberry wiring -------------------------------------------------------------------------


@strawberry.input
class TagInput:
    feeder_id: str
    device_id: str


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[requires(P.READ_GRID)])
    def feeders(self) -> list[str]:
        return ["f1", "f2"]

    @strawberry.field(permission_classes=[requires(P.READ_GRID, feeder_arg="id")])
    def feeder(self, id: strawberry.ID) -> str:
        return f"feeder {id}"

    @strawberry.field(permission_classes=[requires(P.READ_GRID, feeder_arg="id")])
    async def feeder_async(self, id: strawberry.ID) -> str:
        return f"feeder {id}"


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[requires(P.TAG, feeder_arg="input.feeder_id")])
    def set_tag(self, input: TagInput) -> str:
        return f"tagged {input.device_id}"

    @strawberry.mutation(permission_classes=[requires(P.CONTROL)])
    def operate(self) -> str:
        return "done"


SCHEMA = strawberry.Schema(query=Query, mutation=Mutation)


def _codes(result: Any) -> list[type]:
    return [type(e.original_error) for e in result.errors or []]


def test_requires_returns_one_class_per_permission() -> None:
    assert requires(P.READ_GRID) is requires(P.READ_GRID)
    assert requires(P.READ_GRID) is not requires(P.READ_GRID, feeder_arg="id")
    assert requires(P.READ_GRID, feeder_arg="id").__name__ == "RequiresReadGridOnId"


def test_requires_grants_by_role() -> None:
    r = SCHEMA.execute_sync("{ feeders }", context_value={"principal": principal(Role.VIEWER)})
    assert r.errors is None and r.data == {"feeders": ["f1", "f2"]}
    r = SCHEMA.execute_sync("{ feeders }", context_value={"principal": principal(Role.SECAUD)})
    assert _codes(r) == [Forbidden]


def test_requires_without_principal_is_unauthenticated() -> None:
    r = SCHEMA.execute_sync("{ feeders }", context_value={"principal": None})
    assert _codes(r) == [Unauthenticated]
    r = SCHEMA.execute_sync("{ feeders }", context_value={})
    assert _codes(r) == [Unauthenticated]


def test_requires_reraises_the_token_error() -> None:
    err = Unauthenticated("expired")
    r = SCHEMA.execute_sync("{ feeders }", context_value={"principal": None, "auth_error": err})
    assert r.errors and r.errors[0].original_error is err


def test_requires_checks_feeder_argument() -> None:
    ctx = {"principal": principal(Role.VIEWER, feeders={"f1"})}
    r = SCHEMA.execute_sync('{ feeder(id: "f1") }', context_value=ctx)
    assert r.errors is None and r.data == {"feeder": "feeder f1"}
    r = SCHEMA.execute_sync('{ feeder(id: "f9") }', context_value=ctx)
    assert _codes(r) == [Forbidden]


async def test_requires_on_async_resolver() -> None:
    ctx = {"principal": principal(Role.VIEWER, feeders={"f1"})}
    r = await SCHEMA.execute('{ feederAsync(id: "f1") }', context_value=ctx)
    assert r.errors is None
    r = await SCHEMA.execute('{ feederAsync(id: "f2") }', context_value=ctx)
    assert _codes(r) == [Forbidden]


def test_requires_checks_feeder_in_input_object() -> None:
    ctx = {"principal": principal(Role.OPERATOR, feeders={"f1"})}
    q = 'mutation { setTag(input: {feederId: "%s", deviceId: "sw1"}) }'
    r = SCHEMA.execute_sync(q % "f1", context_value=ctx)
    assert r.errors is None and r.data == {"setTag": "tagged sw1"}
    r = SCHEMA.execute_sync(q % "f2", context_value=ctx)
    assert _codes(r) == [Forbidden]
    r = SCHEMA.execute_sync(q % "f1", context_value={"principal": principal(Role.ENGINEER)})
    assert _codes(r) == [Forbidden]


def test_every_field_guarded() -> None:
    assert assert_every_field_guarded(SCHEMA) == []


def test_unguarded_fields_are_listed() -> None:
    from strawberry.permission import BasePermission

    class AllowAll(BasePermission):
        def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
            return True

    @strawberry.type
    class Q:
        @strawberry.field(permission_classes=[requires(P.READ_GRID)])
        def ok(self) -> int:
            return 1

        @strawberry.field
        def open(self) -> int:
            return 1

        @strawberry.field(permission_classes=[AllowAll])
        def custom(self) -> int:
            return 1

    @strawberry.type
    class M:
        @strawberry.mutation
        def naked(self) -> int:
            return 1

    @strawberry.type
    class S:
        @strawberry.subscription
        async def ticks(self) -> AsyncGenerator[int, None]:  # pragma: no cover - never run
            yield 1

        @strawberry.subscription(permission_classes=[requires(P.READ_ALARMS)])
        async def alarms(self) -> AsyncGenerator[int, None]:  # pragma: no cover - never run
            yield 1

    schema = strawberry.Schema(query=Q, mutation=M, subscription=S)
    assert assert_every_field_guarded(schema) == ["Q.open", "Q.custom", "M.naked", "S.ticks"]
