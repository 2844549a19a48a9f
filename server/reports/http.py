"""``GET /reports/<job id>.<csv|xlsx|pdf>``: a finished report's file, for a bearer token with
READ_REPORTS (an AUDIT report also READ_AUDIT; a token limited to feeders gets none: reports are
system-wide). Errors answer in the API's shape (``{"errors": [{"message", "extensions": {"code"}}]}``)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graph_schema.errors import DmsError
from security.errors import Forbidden
from security.roles import Permission, authorize
from server.auth import bearer_token
from server.reports.render import EXTENSIONS, MEDIA_TYPES

_NAME = re.compile(r"([0-9a-f]{32})\.(csv|xlsx|pdf)")
_STATUS = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404}


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]},
                        status_code=_STATUS.get(code, 400))


async def report_file(request: Request) -> Response:
    services = request.app.state.services
    if services.runtime is None or services.auth is None:
        return JSONResponse({"error": "starting"}, status_code=503, headers={"Retry-After": "5"})
    m = _NAME.fullmatch(request.path_params.get("name", ""))
    if m is None:
        return _error("NOT_FOUND", "no such report file; take the url from report(id) { url }")
    header = request.headers.get("authorization")
    source = request.client.host if request.client else "unknown"
    result = await services.auth.authenticate(bearer_token(header), source=source, channel="http")
    if result.principal is None:
        return _error("UNAUTHENTICATED", "authentication required; send a bearer token")
    principal = result.principal
    try:
        authorize(principal, Permission.READ_REPORTS)
        if principal.feeders is not None:
            raise Forbidden("your token is limited to some feeders; reports need a token without a feeder scope")
        svc = services.runtime.reports
        job = await svc.get(m.group(1))
        if job.kind == "AUDIT":
            authorize(principal, Permission.READ_AUDIT)
        if EXTENSIONS[job.format] != m.group(2):
            return _error("NOT_FOUND", f"report {job.id} is a {job.format}; take the url from report(id) {{ url }}")
        body = await svc.content(job)
    except DmsError as exc:
        return _error(exc.code, exc.message)
    return Response(body, media_type=MEDIA_TYPES[job.format], headers={
        "content-disposition": f'attachment; filename="{job.file_name}"', "x-content-sha256": job.content_sha256 or "",
        "cache-control": "private, no-store"})
