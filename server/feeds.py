"""The public outage feed: ``GET /feeds/outages.geojson`` (no authentication).

An RFC 7946 FeatureCollection with one Feature per active (sustained) outage. Each feature carries
only what a utility's public outage map shows: customers affected, start, estimated restoration,
cause category and status, and an area (the convex hull of the affected buses' coordinates, a point,
or ``null`` geometry when the network has no coordinates). No personal data, no device or bus ids:
the feature id is an opaque hash. Responses are cacheable for 30 s with an ETag, so a map polling
every few seconds costs one comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors.cores.outages import public_view

log = logging.getLogger(__name__)

MAX_AGE_S = 30


async def feature_collection(services: Any) -> dict[str, Any]:
    runtime = services.runtime
    features: list[dict[str, Any]] = []
    for outage in await runtime.outages.active():
        try:
            feeder = await runtime.grid.model(outage.feeder_id)
        except Exception:
            feeder = None  # the feeder was removed: publish the outage without an area
        view = public_view(outage, feeder)
        area = view.pop("area")
        fid = view.pop("id")
        features.append({"type": "Feature", "id": fid, "geometry": area, "properties": view})
    features.sort(key=lambda f: (f["properties"]["startedAt"], f["id"]))
    return {"type": "FeatureCollection", "features": features}


def not_modified(if_none_match: list[str], etag: str) -> bool:
    """RFC 9110 13.1.2: ``*`` matches any current representation; otherwise a comma-separated list of
    entity tags, compared weakly (``W/"x"`` matches ``"x"``). Malformed members match nothing."""
    strong = etag.removeprefix("W/")
    for header in if_none_match:
        for member in header.split(","):
            tag = member.strip()
            if tag == "*":
                return True
            tag = tag.removeprefix("W/")
            if len(tag) >= 2 and tag[0] == tag[-1] == '"' and tag == strong:
                return True
    return False


async def outages_geojson(request: Request) -> Response:
    services = request.app.state.services
    if services.runtime is None:
        return JSONResponse({"error": "starting"}, status_code=503, headers={"Retry-After": "5"})
    try:
        body = json.dumps(await feature_collection(services), separators=(",", ":"), sort_keys=True).encode()
    except Exception:
        log.exception("outage feed failed")
        return JSONResponse({"error": "the outage feed is temporarily unavailable"}, status_code=503,
                            headers={"Retry-After": "30", "Cache-Control": "no-store"})
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={MAX_AGE_S}",
        "Access-Control-Allow-Origin": "*",  # public data for customer apps in browsers
        "Vary": "Accept-Encoding",
    }
    if not_modified(request.headers.getlist("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/geo+json", headers=headers)
