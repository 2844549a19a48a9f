"""``recommendations(feederId)``: the ranked list of :mod:`actors.cores.recommendations` for the
feeder now.

The reconfiguration behind it is the feeder's newest DONE ``optimalReconfiguration`` job on the
live feeder when that job ran at today's switch positions and finished within
``REUSE_S`` (loads move a little between scans; switch positions define the question); otherwise
one runs now as a Ray task (never in the feeder actor) on the live snapshot, and is kept for the
same reuse. N-1 items come from the feeder's newest DONE ``runContingency`` job on the live
feeder, when there is one. Each item names the analysis behind it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.cores.recommendations import Recommendation, recommend
from server.study_service import switch_key

REUSE_S = 600.0
_CACHE: dict[str, tuple[str, float, dict[str, Any]]] = {}


async def recommendations(svc: Any, feeder_id: str) -> tuple[Recommendation, ...]:
    from actors import analysis_jobs

    feeder = await svc.live_base(feeder_id)
    key = switch_key(feeder)
    job = await svc.latest_done(feeder_id, "RECONFIGURATION", switch_key=key, max_age_s=REUSE_S)
    cached = _CACHE.get(feeder_id)
    if job is not None and job.result is not None:
        reconf, ref_text = job.result, f"optimalReconfiguration job {job.id}"
    elif cached is not None and cached[0] == key and time.monotonic() - cached[1] < REUSE_S:
        reconf, ref_text = cached[2], "optimalReconfiguration on the live feeder"
    else:
        ref, tracker = analysis_jobs.submit("RECONFIGURATION", feeder, {}, f"recommendations-{feeder_id}")
        try:
            reconf = await ref
        finally:
            tracker.forget.remote(f"recommendations-{feeder_id}")
        _CACHE[feeder_id] = (key, time.monotonic(), reconf)
        ref_text = "optimalReconfiguration on the live feeder"
    n1 = await svc.latest_done(feeder_id, "CONTINGENCY", switch_key=key)
    return await asyncio.to_thread(
        recommend, feeder, reconfiguration=reconf, reconfiguration_ref=ref_text,
        contingency=n1.result if n1 is not None else None,
        contingency_ref=f"runContingency job {n1.id}" if n1 is not None else "runContingency",
    )
