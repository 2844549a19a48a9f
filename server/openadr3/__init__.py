"""The OpenADR 3 VTN under ``/openadr3/``: programs, events, reports, subscriptions, vens, resources.

Why our own: there is no maintained Python VTN. Every request carries a bearer token from the
head-end's identity provider (security/tokens.py), checked like the GraphQL API's:
- role ``VEN`` (permission OPENADR_VEN) with a ``customer_account`` claim: the VEN of that account.
  It registers its ``ven`` once, sees only its own ven and resources (the account's DR enrolments),
  the programmes those resources are enrolled in and their events narrowed to its own resources,
  and posts reports (``OPT_OUT`` opts a resource out under the programme's rules).
- role ``VTN_BL`` (OPENADR_BL): business logic: every programme and event of its feeder scope,
  creates (``POST /events``, the DR core's rules and dispatch, audited) and cancels events
  (``DELETE /events/{id}``), reads all vens and reports.
Events created through GraphQL ``createDrEvent`` and here are the same graph-store ``DrEvent``
records. VENs, reports and subscriptions are graph-store records too (``OadrVen``, ``OadrReport``,
``OadrSubscription``). Refusals are Problems (``application/problem+json``).

Tokens: ``POST /openadr3/auth/token`` (client credentials of clients registered by business logic,
server/openadr3/clients.py) or ``dms token --role VEN --customer-account ACCOUNT``.

Not yet: subscription callbacks (webhooks) are stored but not called; VENs poll. No rate limit of
its own (the GraphQL limiter covers ``/graphql`` only).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from actors.cores import dr
from graph_schema.errors import BadInput, NotFound
from security.roles import Permission, permissions_of
from security.tokens import Principal
from server.auth import bearer_token
from server.dr_service import DrService
from server.openadr3 import objects as o
from server.openadr3.objects import Problem

PREFIX = "/openadr3"
PROBLEM_MEDIA = "application/problem+json"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Caller:
    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        perms = permissions_of(principal.roles)
        self.bl = Permission.OPENADR_BL in perms
        self.ven = Permission.OPENADR_VEN in perms and not self.bl
        self.account = principal.customer_account

    def sees_feeder(self, fid: str) -> bool:
        return self.principal.feeders is None or fid in self.principal.feeders


def _problem(p: Problem, request: Request) -> Response:
    return Response(json.dumps(p.body(request.url.path)), status_code=p.status, media_type=PROBLEM_MEDIA)


def _paged(items: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    try:
        skip = int(request.query_params.get("skip", "0"))
        limit = int(request.query_params.get("limit", "50"))
    except ValueError:
        raise o.bad("skip and limit must be whole numbers (limit 1 to 50)") from None
    if skip < 0 or not 1 <= limit <= 50:
        raise o.bad("skip must be >= 0 and limit 1 to 50")
    return items[skip:skip + limit]


class Vtn:
    def __init__(self, services: Any) -> None:
        self.services = services

    # -- plumbing ---------------------------------------------------------------------------------

    def route(self, fn: Callable[[Request, Caller], Awaitable[Any]], status: int = 200) -> Callable[..., Any]:
        async def handler(request: Request) -> Response:
            try:
                caller = await self._caller(request)
                out = await fn(request, caller)
                return JSONResponse(out, status_code=status)
            except Problem as p:
                return _problem(p, request)
            except NotFound as exc:
                return _problem(Problem(404, "Not Found", str(exc)), request)
            except BadInput as exc:
                return _problem(Problem(400, "Bad Request", str(exc)), request)
        return handler

    async def _caller(self, request: Request) -> Caller:
        auth = self.services.auth
        if auth is None:
            raise Problem(503, "Service Unavailable", "the VTN is starting; retry shortly")
        token = bearer_token(request.headers.get("authorization"))
        source = request.client.host if request.client else "unknown"
        result = await auth.authenticate(token, source=source, channel="openadr3")
        if result.principal is None:
            raise Problem(401, "Unauthorized", "a valid bearer token is required (OAuth2 client credentials of a VEN "
                                               "or business-logic client)")
        caller = Caller(result.principal)
        if not (caller.bl or caller.ven):
            raise Problem(403, "Forbidden", "this token's roles grant no OpenADR access; use a VEN or VTN_BL token")
        if caller.ven and not caller.account:
            raise Problem(403, "Forbidden", "a VEN token must name its customer account (customer_account claim)")
        return caller

    def _dr(self) -> DrService:
        rt = self.services.runtime
        if rt is None:
            raise Problem(503, "Service Unavailable", "the VTN is starting; retry shortly")
        return DrService.of(rt)

    async def _body(self, request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, RecursionError):
            raise o.bad("the body is not valid JSON") from None

    @property
    def store(self) -> Any:
        return self.services.runtime.store

    async def _programs(self, c: Caller) -> list[tuple[dr.Program, str, list[dr.Resource]]]:
        progs = await self._dr().programs()
        if c.bl:
            return [p for p in progs if c.sees_feeder(p[1])]
        return [p for p in progs if any(r.account == c.account for r in p[2])]

    def _mine(self, c: Caller, progs: list[tuple[dr.Program, str, list[dr.Resource]]]) -> set[str]:
        return {r.id for _, _, rs in progs for r in rs if r.account == c.account}

    async def _own_ven(self, c: Caller) -> dict[str, Any] | None:
        rows = await self.store.list_records("OadrVen", where={"account": c.account}, limit=1)
        return rows[0] if rows else None

    def _require_bl(self, c: Caller, what: str) -> None:
        if not c.bl:
            raise Problem(403, "Forbidden", f"{what} needs a business-logic (VTN_BL) token; a VEN may not")

    async def _audit(self, request: Request, c: Caller, action: str, target: str, outcome: str,
                     detail: dict[str, Any]) -> None:
        audit = self.services.audit
        if audit is not None:
            await audit.record(action, actor=c.principal.sub, roles=[r.value for r in c.principal.roles],
                               target=target, source=request.client.host if request.client else "",
                               outcome=outcome, detail=detail)

    # -- programs -----------------------------------------------------------------------------------

    async def programs(self, request: Request, c: Caller) -> Any:
        return _paged([o.program(p, fid, _EPOCH) for p, fid, _ in await self._programs(c)], request)

    async def program(self, request: Request, c: Caller) -> Any:
        pid = request.path_params["id"]
        for p, fid, _ in await self._programs(c):
            if p.id == pid:
                return o.program(p, fid, _EPOCH)
        raise Problem(404, "Not Found", f"program {pid!r} not found among the programs this client may see")

    # -- events -------------------------------------------------------------------------------------

    async def _visible_events(self, c: Caller) -> list[dict[str, Any]]:
        progs = await self._programs(c)
        ids = {p.id for p, _, _ in progs}
        mine = None if c.bl else self._mine(c, progs)
        out = []
        for v in await self._dr().events():
            if v.event.program_id in ids:
                out.append(o.event(v.event, v.status, _EPOCH, mine))
        return out

    async def events(self, request: Request, c: Caller) -> Any:
        evs = await self._visible_events(c)
        pid = request.query_params.get("programID")
        if pid is not None:
            evs = [e for e in evs if e["programID"] == pid]
        return _paged(evs, request)

    async def event(self, request: Request, c: Caller) -> Any:
        eid = request.path_params["id"]
        for e in await self._visible_events(c):
            if e["id"] == eid:
                return e
        raise Problem(404, "Not Found", f"event {eid!r} not found among the events this client may see")

    async def create_event(self, request: Request, c: Caller) -> Any:
        self._require_bl(c, "creating an event")
        ne = o.new_event(await self._body(request))
        progs = {p.id: fid for p, fid, _ in await self._programs(c)}
        if ne.program_id not in progs:
            raise Problem(404, "Not Found", f"program {ne.program_id!r} not found among this client's programs")
        fid = progs[ne.program_id]
        try:
            v = await self._dr().create_event(ne.program_id, fid, ne.start, ne.end, ne.target_kw, False,
                                              c.principal.sub)
        except (BadInput, NotFound) as exc:
            await self._audit(request, c, "DR_EVENT_CREATE", f"{fid}/{ne.program_id}", "REFUSED",
                              {"via": "openadr3", "reason": str(exc)})
            raise
        await self._audit(request, c, "DR_EVENT_CREATE", f"{fid}/{ne.program_id}", "OK",
                          {"via": "openadr3", "event": v.event.id, "target_kw": ne.target_kw})
        return o.event(v.event, v.status, _EPOCH)

    async def delete_event(self, request: Request, c: Caller) -> Any:
        self._require_bl(c, "cancelling an event")
        e = await self.event(request, c)
        v = await self._dr().cancel_event(e["id"])
        await self._audit(request, c, "DR_EVENT_CANCEL", f"{v.event.feeder_id}/{v.event.id}", "OK", {"via": "openadr3"})
        return o.event(v.event, v.status, _EPOCH)

    # -- vens and resources -------------------------------------------------------------------------

    @staticmethod
    def _ven(row: dict[str, Any]) -> dict[str, Any]:
        created = datetime.fromisoformat(row["created"])
        return {"id": row["id"], "createdDateTime": o.iso(created), "modificationDateTime": o.iso(created),
                "objectType": "VEN", "venName": row["ven_name"], "attributes": [], "targets": []}

    async def vens(self, request: Request, c: Caller) -> Any:
        if c.bl:
            rows = await self.store.list_records("OadrVen", limit=100_000)
        else:
            own = await self._own_ven(c)
            rows = [own] if own else []
        name = request.query_params.get("venName")
        return _paged([self._ven(r) for r in rows if name is None or r["ven_name"] == name], request)

    async def _ven_row(self, c: Caller, ven_id: str) -> dict[str, Any]:
        rows = await self.store.list_records("OadrVen", where={"id": ven_id}, limit=1)
        if not rows or (not c.bl and rows[0]["account"] != c.account):
            # Another VEN's id answers as absent, not forbidden: ids of others are not disclosed.
            raise Problem(404, "Not Found", f"ven {ven_id!r} not found among the vens this client may see")
        return dict(rows[0])

    async def ven(self, request: Request, c: Caller) -> Any:
        return self._ven(await self._ven_row(c, request.path_params["id"]))

    async def create_ven(self, request: Request, c: Caller) -> Any:
        b = o.obj(await self._body(request), "VEN")
        name = o.text(b, "venName")
        if not c.ven:
            raise Problem(403, "Forbidden", "a VEN registers itself with its own VEN token (customer_account claim)")
        if await self._own_ven(c) is not None:
            raise Problem(409, "Conflict", f"account {c.account} already has a ven; GET /vens returns it")
        if await self.store.list_records("OadrVen", where={"ven_name": name}, limit=1):
            raise Problem(409, "Conflict", f"venName {name!r} is taken; choose another")
        row = {"id": f"ven-{uuid.uuid4().hex[:12]}", "ven_name": name, "account": c.account, "sub": c.principal.sub,
               "created": datetime.now(UTC).isoformat()}
        await self.store.append_record("OadrVen", row)
        return self._ven(row)

    async def _resources(self, c: Caller, ven: dict[str, Any] | None) -> list[dict[str, Any]]:
        progs = await self._programs(c)
        if c.bl:
            by_acct = {r["account"]: r["id"] for r in await self.store.list_records("OadrVen", limit=100_000)}
            out = [o.resource(r, by_acct[r.account], _EPOCH) for _, _, rs in progs for r in rs if r.account in by_acct]
            return [x for x in out if ven is None or x["venID"] == ven["id"]]
        own = await self._own_ven(c)
        if own is None:
            raise Problem(404, "Not Found", "this VEN is not registered; POST /vens {\"venName\": ...} first")
        return [o.resource(r, own["id"], _EPOCH) for _, _, rs in progs for r in rs if r.account == c.account]

    async def resources(self, request: Request, c: Caller) -> Any:
        ven_id = request.path_params.get("id") or request.query_params.get("venID")
        ven = await self._ven_row(c, ven_id) if ven_id else None
        return _paged(await self._resources(c, ven), request)

    # -- reports ------------------------------------------------------------------------------------

    @staticmethod
    def _report(row: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(row["body"])
        created = datetime.fromisoformat(row["created"])
        return {**body, "id": row["id"], "createdDateTime": o.iso(created), "modificationDateTime": o.iso(created),
                "objectType": "REPORT"}

    async def reports(self, request: Request, c: Caller) -> Any:
        where = None if c.bl else {"account": c.account}
        rows = await self.store.list_records("OadrReport", where=where, limit=100_000)
        out = [self._report(r) for r in rows]
        for key in ("programID", "eventID", "clientName"):
            if request.query_params.get(key) is not None:
                out = [r for r in out if r.get(key) == request.query_params[key]]
        return _paged(out, request)

    async def create_report(self, request: Request, c: Caller) -> Any:
        body = await self._body(request)
        rep = o.new_report(body)
        if not c.ven:
            raise Problem(403, "Forbidden", "reports are posted by VENs with their own VEN token")
        await self.event(_with_id(request, rep.event_id), c)  # 404 unless the event is this VEN's to see
        progs = await self._programs(c)
        mine = self._mine(c, progs)
        strangers = [n for n in rep.resource_names if n not in mine]
        if strangers:
            raise Problem(403, "Forbidden", f"resources {strangers[:5]} are not this VEN's; report only its own "
                                            f"(GET /resources lists them)")
        for name in rep.opt_outs:
            v = await self._dr().opt_out(rep.event_id, name)
            await self._audit(request, c, "DR_OPT_OUT", f"{v.event.feeder_id}/{v.event.id}", "OK",
                              {"via": "openadr3", "resource": name})
        row = {"id": f"rep-{uuid.uuid4().hex[:12]}", "account": c.account, "event_id": rep.event_id,
               "created": datetime.now(UTC).isoformat(),
               "body": json.dumps({k: v for k, v in body.items() if k not in ("id", "createdDateTime",
                                                                               "modificationDateTime")})}
        await self.store.append_record("OadrReport", row)
        return self._report(row)

    # -- subscriptions ------------------------------------------------------------------------------

    async def subscriptions(self, request: Request, c: Caller) -> Any:
        rows = await self.store.list_records("OadrSubscription", where={"sub": c.principal.sub}, limit=10_000)
        return _paged([{**json.loads(r["body"]), "id": r["id"], "objectType": "SUBSCRIPTION"} for r in rows], request)

    async def create_subscription(self, request: Request, c: Caller) -> Any:
        b = o.obj(await self._body(request), "SUBSCRIPTION")
        o.text(b, "clientName")
        ops = b.get("objectOperations")
        if not isinstance(ops, list) or not ops or not all(
                isinstance(x, dict) and isinstance(x.get("objects"), list) and isinstance(x.get("operations"), list)
                and isinstance(x.get("callbackUrl"), str) for x in ops):
            raise o.bad("'objectOperations' must be a list of {objects: [...], operations: [...], callbackUrl: str}")
        row = {"id": f"sub-{uuid.uuid4().hex[:12]}", "sub": c.principal.sub, "body": json.dumps(b)}
        await self.store.append_record("OadrSubscription", row)
        return {**b, "id": row["id"], "objectType": "SUBSCRIPTION"}


def _with_id(request: Request, ident: str) -> Request:
    scope = dict(request.scope)
    scope["path_params"] = {**request.path_params, "id": ident}
    return Request(scope)


def mount(services: Any) -> Mount:
    """The VTN's routes, mounted at ``/openadr3`` by server/app.py."""
    v = Vtn(services)
    r = v.route
    from server.openadr3.clients import routes as auth_routes

    return Mount(PREFIX, routes=[
        *auth_routes(v),
        Route("/programs", r(v.programs), methods=["GET"]),
        Route("/programs/{id}", r(v.program), methods=["GET"]),
        Route("/events", r(v.events), methods=["GET"]),
        Route("/events", r(v.create_event, 201), methods=["POST"]),
        Route("/events/{id}", r(v.event), methods=["GET"]),
        Route("/events/{id}", r(v.delete_event), methods=["DELETE"]),
        Route("/vens", r(v.vens), methods=["GET"]),
        Route("/vens", r(v.create_ven, 201), methods=["POST"]),
        Route("/vens/{id}", r(v.ven), methods=["GET"]),
        Route("/vens/{id}/resources", r(v.resources), methods=["GET"]),
        Route("/resources", r(v.resources), methods=["GET"]),
        Route("/reports", r(v.reports), methods=["GET"]),
        Route("/reports", r(v.create_report, 201), methods=["POST"]),
        Route("/subscriptions", r(v.subscriptions), methods=["GET"]),
        Route("/subscriptions", r(v.create_subscription, 201), methods=["POST"]),
    ])
