"""The feeder host's live state, on a host built in-process (no Ray, no store): an estimate that
finishes after the field was detached must not become the live state."""

from __future__ import annotations

from types import SimpleNamespace

from actors.feeder_actor import FeederActor, FeederState, StoreAddress
from actors.ingest import Ingest
from graph_schema.importers import case33bw
from graph_schema.secret import Secret


def _host() -> FeederActor:
    feeder = case33bw()
    host = FeederActor(feeder.id, StoreAddress("bolt://127.0.0.1:1", "u", Secret("p"), None))
    host.ingest = Ingest(feeder)
    host._state = FeederState(feeder_id=feeder.id, version=1, switch_states={}, load_scale=1.0,
                              topology=SimpleNamespace(), power_flow=SimpleNamespace(losses_mw=0.2027))
    return host


def test_an_estimate_arriving_after_detach_is_dropped_and_the_model_stands() -> None:
    host = _host()
    assert host.ingest is not None and not host.ingest.points  # nothing bound: the field was detached
    late = SimpleNamespace(power_flow=SimpleNamespace(losses_mw=0.101), stale=False)
    host.publish_estimate(late)
    assert host._state is not None and host._state.estimate is None
    assert host._state.live.losses_mw == 0.2027


def test_an_estimate_over_a_bound_field_is_published_and_none_goes_back_to_the_model() -> None:
    host = _host()
    assert host.ingest is not None
    host.ingest.bind({"p1": SimpleNamespace(quantity="V_PU", element_id="bus1")})
    est = SimpleNamespace(power_flow=SimpleNamespace(losses_mw=0.101), stale=False)
    host.publish_estimate(est)
    assert host._state is not None and host._state.live.losses_mw == 0.101
    host.publish_estimate(None)
    assert host._state.estimate is None and host._state.live.losses_mw == 0.2027
