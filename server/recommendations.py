"""``recommendations(feederId)``: the ranked list of :mod:`actors.cores.recommendations` for the
feeder now.

The reconfiguration behind it runs as a Ray task (never in the feeder actor) on the live snapshot
and is kept per feeder for as long as the snapshot is the same (same switch positions and loads),
so asking again is cheap. N-1 items come from the feeder's latest DONE ``runContingency`` job on
the live feeder, when there is one (the answer names that job).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from actors.cores.recommendations import Recommendation, recommend
from graph_schema.model import Feeder

_CACHE: dict[str, tuple[str, dict[str, Any]]] = {}


def _key(feeder: Feeder) -> str:
    state = ([(s.id, s.is_open) for s in feeder.switches], [(ld.id, round(ld.p_mw, 6), round(ld.q_mvar, 6))
                                                             for ld in feeder.loads])
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


async def recommendations(svc: Any, feeder_id: str) -> tuple[Recommendation, ...]:
    from actors import analysis_jobs

    feeder = await svc.live_base(feeder_id)
    key = _key(feeder)
    cached = _CACHE.get(feeder_id)
    if cached is not None and cached[0] == key:
        reconf = cached[1]
    else:
        ref, tracker = analysis_jobs.submit("RECONFIGURATION", feeder, {}, f"recommendations-{feeder_id}")
        try:
            reconf = await ref
        finally:
            tracker.forget.remote(f"recommendations-{feeder_id}")
        _CACHE[feeder_id] = (key, reconf)
    n1 = await svc.latest_done(feeder_id, "CONTINGENCY")
    return await asyncio.to_thread(
        recommend, feeder, reconfiguration=reconf,
        reconfiguration_ref="optimalReconfiguration on the live feeder",
        contingency=n1.result if n1 is not None else None,
        contingency_ref=f"runContingency job {n1.id}" if n1 is not None else "runContingency",
    )
