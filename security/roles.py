"""Roles and permissions after IEC 62351-8 (role-based access control for power system management).

IEC 62351-8 names a small set of mandatory roles (VIEWER, OPERATOR, ENGINEER, INSTALLER, SECADM,
SECAUD, RBACMNT) and binds each to *rights* (view, read, control, configure, security management,
audit...). Here those rights are made concrete as :class:`Permission` values, one per kind of
operation the head-end offers, and the binding lives in ONE table, :data:`PERMISSIONS`.
CUSTOMER is not a 62351-8 role: it is this project's role for customer apps (public outage feed,
demand-response enrolment) and is granted nothing of the operational surface. SUPERVISOR is not a
62351-8 role either (62351-8 lets a utility define its own): the control-room shift supervisor, an
OPERATOR who may also remove a safety tag held by someone else (``OVERRIDE_TAG``), which lockout-tagout
procedures (OSHA 1910.269(d)(2)(v)) reserve to the holder or a designated supervisor.

Deny by default: a role grants exactly what the table lists; an unknown role grants nothing; every
GraphQL root field must name its permission with :func:`requires` (checked by
:func:`assert_every_field_guarded`).

Customer scope: a CUSTOMER token may carry a ``customer_account`` claim (``Principal.customer_account``);
``energyUsage`` answers such a token for the meters of that account only
(:func:`graph_schema.historian.ami.meters_of_account`) and FORBIDDEN for any other meter.

Feeder scope: a principal whose token carries ``feeders`` may act only on those feeders.
:func:`authorize` enforces it when the caller names the feeder concerned. A resolver that returns a
list across feeders must filter it with :func:`feeder_in_scope`, and one that acts on a device must
resolve the device's feeder and call :func:`authorize` with it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from strawberry.permission import BasePermission, PermissionExtension

from security.errors import Forbidden, Unauthenticated

if TYPE_CHECKING:
    from security.tokens import Principal

log = logging.getLogger(__name__)


class Role(StrEnum):
    """IEC 62351-8 mandatory roles, plus CUSTOMER (project-specific)."""

    VIEWER = "VIEWER"  # sees the process: grid, alarms, outages
    OPERATOR = "OPERATOR"  # runs the process: view + control
    ENGINEER = "ENGINEER"  # configures the process: view + settings and model
    INSTALLER = "INSTALLER"  # commissions devices: model/point maps
    SECADM = "SECADM"  # security administrator: security settings, role assignments
    SECAUD = "SECAUD"  # security auditor: reads the audit log, nothing else
    RBACMNT = "RBACMNT"  # RBAC management: role assignments only
    CUSTOMER = "CUSTOMER"  # not 62351-8: customer apps (public feed, demand response)
    SUPERVISOR = "SUPERVISOR"  # not 62351-8: shift supervisor, operator + removing others' tags
    PLANNER = "PLANNER"  # not 62351-8: network planner, studies and analyses, never control


class Permission(StrEnum):
    """One kind of operation the head-end offers. A GraphQL field needs exactly one."""

    READ_GRID = "READ_GRID"  # feeders, topology, measurements, power flow results
    READ_OUTAGES = "READ_OUTAGES"  # outage records with internal detail
    READ_ALARMS = "READ_ALARMS"  # alarms and events
    ACK_ALARMS = "ACK_ALARMS"  # acknowledge alarms (the operator has seen them and takes them on)
    READ_REPORTS = "READ_REPORTS"  # reliability/regulatory reports
    CONTROL = "CONTROL"  # select / operate / cancel on field devices
    TAG = "TAG"  # set / remove safety tags (one's own)
    OVERRIDE_TAG = "OVERRIDE_TAG"  # remove a safety tag another person holds
    APPROVE_PLAN = "APPROVE_PLAN"  # approve / reject an FDIR restoration plan
    SET_MODE = "SET_MODE"  # FDIR mode (automatic / advisory / off) of a feeder
    WHAT_IF = "WHAT_IF"  # simulations that change nothing in the field
    CHANGE_SETTINGS = "CHANGE_SETTINGS"  # operational settings (limits, FDIR parameters)
    CHANGE_SECURITY_SETTINGS = "CHANGE_SECURITY_SETTINGS"  # identity, limits, security policy
    CHANGE_MODEL = "CHANGE_MODEL"  # import feeders, edit devices and point maps
    READ_AUDIT = "READ_AUDIT"  # read and verify the audit log
    MANAGE_ROLES = "MANAGE_ROLES"  # assign roles / feeder scopes to identities
    READ_PUBLIC_FEED = "READ_PUBLIC_FEED"  # the public outage feed (no personal data)
    DEMAND_RESPONSE_ENROLL = "DEMAND_RESPONSE_ENROLL"  # a customer enrols in demand response
    READ_ENERGY_USAGE = "READ_ENERGY_USAGE"  # smart-meter intervals (a customer: only its own meters)
    RUN_STUDIES = "RUN_STUDIES"  # analysis jobs: reconfiguration, hosting capacity, N-1, scenarios (#14)


P = Permission

# What every role that watches the grid may read. The public feed is a strict subset of
# READ_OUTAGES, so whoever sees internal outages may see the public view of them too.
_VIEW = frozenset({P.READ_GRID, P.READ_OUTAGES, P.READ_ALARMS, P.READ_REPORTS, P.READ_PUBLIC_FEED,
                   P.READ_ENERGY_USAGE})

_OPERATE = _VIEW | {P.CONTROL, P.TAG, P.APPROVE_PLAN, P.WHAT_IF, P.SET_MODE, P.ACK_ALARMS}

PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        # 62351-8 VIEWER: "view" right only. No simulations either: WHAT_IF costs solver time and
        # is an operating/engineering tool.
        Role.VIEWER: _VIEW,
        # 62351-8 OPERATOR: view + control. Control covers select/operate/cancel and safety tags
        # (tagging is part of switching procedure), approving FDIR plans (the operator executes
        # them in advisory mode), what-if studies before switching, and FDIR mode (the operator
        # suspends automation on a feeder with crews on site). No settings, no model changes.
        # Acknowledging alarms is the operator's: it says someone in the control room owns them.
        Role.OPERATOR: _OPERATE,
        # Project role: the shift supervisor is an operator who may also remove a tag someone else
        # holds (the holder is gone; the supervisor confirmed the work is clear, per procedure).
        Role.SUPERVISOR: _OPERATE | {P.OVERRIDE_TAG},
        # 62351-8 ENGINEER: view + configuration/data sets. Operational settings, the grid model,
        # what-if studies and FDIR mode (a configuration choice per feeder). Deliberately no
        # CONTROL/TAG/APPROVE_PLAN: engineers do not switch the live grid (separation of duties).
        Role.ENGINEER: _VIEW | {P.CHANGE_SETTINGS, P.CHANGE_MODEL, P.WHAT_IF, P.SET_MODE},
        # 62351-8 INSTALLER: install/replace devices and their configuration. Point maps and device
        # records (CHANGE_MODEL) and reading the grid to commission against. Nothing else.
        Role.INSTALLER: frozenset({P.CHANGE_MODEL, P.READ_GRID}),
        # 62351-8 SECADM: security administration. Role assignments and the *security* settings
        # only (not operational ones: that is ENGINEER). No READ_AUDIT: the auditor audits the
        # administrator (separation of duties). No grid access, no control.
        Role.SECADM: frozenset({P.MANAGE_ROLES, P.CHANGE_SECURITY_SETTINGS}),
        # 62351-8 SECAUD: reads the audit trail. Nothing that changes anything, nothing of control.
        Role.SECAUD: frozenset({P.READ_AUDIT}),
        # 62351-8 RBACMNT: manages role assignments only.
        Role.RBACMNT: frozenset({P.MANAGE_ROLES}),
        # Project role for customer apps: the public outage feed, demand-response enrolment and the
        # energy use of the customer's own meters (the service checks the token's account per meter).
        Role.CUSTOMER: frozenset({P.READ_PUBLIC_FEED, P.DEMAND_RESPONSE_ENROLL, P.READ_ENERGY_USAGE}),
        # Project role (#14): the network planner reads the grid, makes what-if studies and runs the heavy
        # analyses (N-1, hosting capacity, reconfiguration, growth scenarios). No CONTROL/APPROVE_PLAN: a
        # recommended switching plan is executed by an operator through select-before-operate.
        Role.PLANNER: _VIEW | {P.WHAT_IF, P.RUN_STUDIES},
    }
)

del P


# What a caller without any token may do: only the public outage feed (a utility's outage map is
# public). Everything else answers UNAUTHENTICATED.
ANONYMOUS_PERMISSIONS: frozenset[Permission] = frozenset({Permission.READ_PUBLIC_FEED})


def permissions_of(roles: Iterable[Role]) -> frozenset[Permission]:
    """The union of what ``roles`` grant (an unknown role grants nothing)."""
    out: set[Permission] = set()
    for role in roles:
        out |= PERMISSIONS.get(role, frozenset())
    return frozenset(out)


def feeder_in_scope(principal: Principal, feeder_id: str) -> bool:
    """Whether ``principal`` may see/act on ``feeder_id`` (``feeders is None`` means all feeders)."""
    return principal.feeders is None or feeder_id in principal.feeders


def allowed(principal: Principal | None, permission: Permission, *, feeder_id: str | None = None) -> bool:
    """True when :func:`authorize` would pass."""
    if principal is None:
        return permission in ANONYMOUS_PERMISSIONS and feeder_id is None
    if permission not in permissions_of(principal.roles):
        return False
    return feeder_id is None or feeder_in_scope(principal, feeder_id)


def authorize(principal: Principal | None, permission: Permission, *, feeder_id: str | None = None) -> None:
    """Raise unless ``principal`` holds ``permission`` (on ``feeder_id`` when one is named).

    :raises Unauthenticated: no principal at all.
    :raises Forbidden: the roles do not grant the permission, or the feeder is outside the token's
        feeder scope. The message names neither the principal's roles nor its feeder list.
    """
    if principal is None:
        if permission in ANONYMOUS_PERMISSIONS and feeder_id is None:
            return
        raise Unauthenticated("missing", "authentication required; send a bearer token")
    if permission not in permissions_of(principal.roles):
        log.info("forbidden: sub=%r roles=%s lacks %s", principal.sub,
                 sorted(r.value for r in principal.roles), permission.value)
        raise Forbidden()
    if feeder_id is not None and not feeder_in_scope(principal, feeder_id):
        log.info("forbidden: sub=%r outside feeder scope for %s (%r)", principal.sub, permission.value,
                 feeder_id)
        raise Forbidden("this feeder is outside the scope of your token; ask for a token that includes it")


# --- Strawberry wiring -------------------------------------------------------------------------


class _RequiresPermission(BasePermission):
    """Base of the classes :func:`requires` makes; :func:`assert_every_field_guarded` looks for it."""

    permission: Permission
    feeder_arg: str | None = None
    message = "forbidden"
    error_extensions = {"code": "FORBIDDEN"}

    def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
        # Synchronous on purpose (a plain bool): works for sync and async resolvers alike.
        context = info.context
        principal = context.get("principal") if isinstance(context, Mapping) else getattr(
            context, "principal", None)
        if principal is None:
            err = context.get("auth_error") if isinstance(context, Mapping) else None
            if isinstance(err, Unauthenticated):
                raise err  # a token was presented and refused: never fall back to anonymous
            if self.permission in ANONYMOUS_PERMISSIONS and self.feeder_arg is None:
                return True
            raise Unauthenticated("missing", "authentication required; send a bearer token")
        feeder_id = _argument(kwargs, self.feeder_arg) if self.feeder_arg else None
        authorize(principal, self.permission, feeder_id=None if feeder_id is None else str(feeder_id))
        return True

    def on_unauthorized(self) -> None:  # has_permission raises itself; kept as a fail-closed backstop
        raise Forbidden()


def _argument(kwargs: Mapping[str, Any], path: str) -> Any:
    """``feeder_id`` or a dotted path into an input object (``input.feeder_id``)."""
    head, _, rest = path.partition(".")
    value: Any = kwargs.get(head)
    for part in rest.split(".") if rest else ():
        if value is None:
            return None
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


def requires(permission: Permission, *, feeder_arg: str | None = None) -> type[BasePermission]:
    """A Strawberry permission class that demands ``permission``.

    ``feeder_arg`` is the Python name of the field argument holding the feeder id (``"id"``,
    ``"feeder_id"``, or a dotted path into an input object); with it, a feeder-scoped token is
    refused for feeders outside its scope. A ``None`` argument value is not checked: the resolver
    must then filter its results with :func:`feeder_in_scope`.

    Use: ``@strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="id")])``.
    The context must hold ``"principal"`` (a :class:`~security.tokens.Principal` or ``None``) and
    may hold ``"auth_error"`` (the :class:`Unauthenticated` from validating the token).
    """
    return _requires(Permission(permission), feeder_arg or None)


@functools.cache
def _requires(permission: Permission, feeder_arg: str | None) -> type[BasePermission]:
    # One class per (permission, feeder_arg): Strawberry derives a schema directive from the class
    # name, and two different classes with one name would collide when the schema is built.
    name = "Requires" + _camel(permission.value)
    if feeder_arg:
        name += "On" + _camel(feeder_arg.replace(".", "_"))
    return type(name, (_RequiresPermission,), {"permission": permission, "feeder_arg": feeder_arg,
                                               "__module__": __name__, "__qualname__": name})


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:].lower() for part in text.split("_") if part)


def assert_every_field_guarded(schema: Any) -> list[str]:
    """Root fields (Query/Mutation/Subscription) without a :func:`requires` permission.

    Returns ``"Type.field"`` strings; an empty list means every root field is guarded. Accepts a
    ``strawberry.Schema`` (or its underlying graphql-core schema). A field guarded only by some other
    ``BasePermission`` is listed too: every field must *name* the permission it needs.
    """
    gql = getattr(schema, "_schema", schema)
    missing: list[str] = []
    for root in (gql.query_type, gql.mutation_type, gql.subscription_type):
        if root is None:
            continue
        for name, gfield in root.fields.items():
            sfield = (gfield.extensions or {}).get("strawberry-definition")
            if not _guarded(sfield):
                missing.append(f"{root.name}.{name}")
    return missing


def _guarded(sfield: Any) -> bool:
    if sfield is None:
        return False
    perms: list[Any] = []
    for ext in getattr(sfield, "extensions", ()) or ():
        if isinstance(ext, PermissionExtension):
            perms.extend(ext.permissions)
    perms.extend(getattr(sfield, "permission_classes", ()) or ())
    return any(
        isinstance(p, _RequiresPermission) or (isinstance(p, type) and issubclass(p, _RequiresPermission))
        for p in perms
    )
