"""A study at a past time: the feeder rebuilt from a real historian data set (Parquet + DuckDB)
written by the backfill, with the model from a stand-in for the graph store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from graph_schema.errors import BadInput, NotFound
from graph_schema.historian.backfill import backfill
from graph_schema.historian.query import HistorianReader
from graph_schema.importers import case33bw
from server.study_service import StudyService

END = datetime(2025, 3, 10, tzinfo=UTC)


class _Grid:
    def __init__(self, feeder) -> None:
        self.feeder = feeder

    async def model(self, feeder_id: str):
        return self.feeder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("historian")
    backfill(str(path), [case33bw()], days=2, end=END)
    return str(path)


def test_loads_follow_the_last_solve_before_the_time(root) -> None:
    feeder = case33bw()
    svc = StudyService(_Grid(feeder), None, historian_root=root, utc_now=lambda: END + timedelta(days=1))
    at = END - timedelta(hours=30)
    past = asyncio.run(svc.state_at("case33bw", at))
    solve = HistorianReader(root).feeder_history("case33bw", at - timedelta(hours=1), at, None)[-1]
    total = sum(ld.p_mw for ld in past.loads)
    assert total == pytest.approx(solve.p_source_mw - solve.losses_mw, rel=1e-9)
    assert total != pytest.approx(sum(ld.p_mw for ld in feeder.loads), rel=1e-3)  # not the nominal loads
    assert {s.id: s.is_open for s in past.switches} == {s.id: s.is_open for s in feeder.switches}


def test_times_the_historian_cannot_answer(root) -> None:
    svc = StudyService(_Grid(case33bw()), None, historian_root=root, utc_now=lambda: END + timedelta(days=1))
    with pytest.raises(NotFound, match="choose a time the historian covers"):
        asyncio.run(svc.state_at("case33bw", END - timedelta(days=20)))
    with pytest.raises(BadInput, match="future"):
        asyncio.run(svc.state_at("case33bw", END + timedelta(days=2)))
    with pytest.raises(BadInput, match="UTC offset"):
        asyncio.run(svc.state_at("case33bw", datetime(2025, 3, 9)))
