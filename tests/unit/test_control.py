"""Select-before-operate core: every refusal code, races, expiry at the boundary, tags, interlocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from actors.cores.control import (
    BadAction,
    ControlAction,
    ControlCore,
    DeviceTagged,
    DeviceUnreachable,
    Interlock,
    NoSelection,
    NotConfirmed,
    NotFound,
    ParametersDiffer,
    SelectedByOther,
    SelectionExpired,
    Tag,
    TagKind,
    check_interlocks,
    expected_state,
)
from graph_schema.errors import DmsError
from graph_schema.model import Capacitor, Der, DerKind, SwitchKind
from tests.unit import grids

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def utc(self) -> datetime:
        return T0 + timedelta(seconds=self.t - 1000.0)


def radial_plus():
    """``grids.radial()`` with a disconnector, a fuse, a multi-step capacitor, storage and a trafo."""
    f = grids.with_substation_transformer()
    extra = (
        grids.switch("dis3", "b3", "l3", kind=SwitchKind.DISCONNECTOR),
        grids.switch("fuse5", "b2", "l4", kind=SwitchKind.FUSE),
    )
    return replace(
        f,
        switches=(*f.switches, *extra),
        capacitors=(Capacitor(id="cap4", bus_id="b4", q_mvar=0.3, steps=3, step=1),),
        ders=(*f.ders, Der(id="bess5", bus_id="b5", kind=DerKind.STORAGE, sn_mva=0.5, p_mw=0.0)),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(clock: Clock) -> ControlCore:
    return ControlCore(radial_plus(), select_timeout_s=10.0, now=clock, utc_now=clock.utc)


STATES: dict[str, bool] = {}


def sel(core: ControlCore, device: str = "sw_b2", action: str = "OPEN", value: float | None = None,
        who: str = "alice", **kw):
    return core.select(device, action, value, who, switch_states=kw.pop("switch_states", STATES), **kw)


def op(core: ControlCore, s, device: str | None = None, action: str | None = None, value: float | None = None,
       who: str | None = None, **kw):
    value = value if value is not None else s.value
    return core.operate(s.id, device or s.device_id, action or s.action, value, who or s.operator,
                        switch_states=kw.pop("switch_states", STATES), **kw)


# -- happy path and single use ---------------------------------------------------------------------


def test_select_then_operate_returns_the_selection_once(core: ControlCore, clock: Clock) -> None:
    s = sel(core)
    assert s.device_id == "sw_b2" and s.action is ControlAction.OPEN and s.operator == "alice"
    assert s.expires_at == clock.t + 10.0
    assert s.expires_at_utc == T0.replace(second=10)
    assert len(s.id) >= 32
    assert s.id not in repr(s)
    clock.t += 5
    assert op(core, s) == s
    with pytest.raises(NoSelection) as e:
        op(core, s)
    assert e.value.code == "NO_SELECTION"
    assert core.selections() == []


def test_selection_ids_are_unguessable_and_distinct(core: ControlCore) -> None:
    a = sel(core, "sw_b2")
    b = sel(core, "sw_b1")
    assert a.id != b.id


def test_expected_state() -> None:
    assert expected_state(ControlAction.OPEN) is True
    assert expected_state("CLOSE") is False
    assert expected_state(ControlAction.RAISE) is None
    assert expected_state(ControlAction.SET) is None


# -- expiry ----------------------------------------------------------------------------------------


def test_operate_just_before_expiry_succeeds(core: ControlCore, clock: Clock) -> None:
    s = sel(core)
    clock.t = s.expires_at - 1e-6
    assert op(core, s).id == s.id


def test_operate_exactly_at_expiry_is_refused_and_drops_it(core: ControlCore, clock: Clock) -> None:
    s = sel(core)
    clock.t = s.expires_at
    with pytest.raises(SelectionExpired) as e:
        op(core, s)
    assert e.value.code == "SELECTION_EXPIRED"
    assert "select the device again" in str(e.value)
    with pytest.raises(NoSelection):
        op(core, s)


def test_expire_sweeps_at_the_boundary(core: ControlCore, clock: Clock) -> None:
    a = sel(core, "sw_b2")
    clock.t += 3
    b = sel(core, "sw_b1")
    clock.t = a.expires_at - 1e-9
    assert core.expire() == []
    clock.t = a.expires_at
    assert core.expire() == [a]
    assert core.selections() == [b]
    clock.t = b.expires_at
    assert core.expire() == [b]
    assert core.expire() == []


# -- races between operators -----------------------------------------------------------------------


def test_first_select_wins_second_gets_selected_by_other(core: ControlCore) -> None:
    a = sel(core, who="alice")
    with pytest.raises(SelectedByOther) as e:
        sel(core, who="bob")
    err = e.value
    assert err.code == "SELECTED_BY_OTHER" and err.element_id == "sw_b2"
    assert "selected by another operator until 2025-01-01T12:00:10" in str(err)
    assert a.id not in str(err) and "alice" not in str(err)
    assert err.held_by == "alice"


def test_after_cancel_the_other_operator_can_select(core: ControlCore) -> None:
    a = sel(core, who="alice")
    with pytest.raises(SelectedByOther):
        sel(core, who="bob")
    core.cancel(a.id, "alice")
    b = sel(core, who="bob")
    assert b.operator == "bob"
    with pytest.raises(NoSelection):
        op(core, a)


def test_after_expiry_the_other_operator_can_select(core: ControlCore, clock: Clock) -> None:
    a = sel(core, who="alice")
    clock.t = a.expires_at - 0.001
    with pytest.raises(SelectedByOther):
        sel(core, who="bob")
    clock.t = a.expires_at  # expired, not yet swept
    b = sel(core, who="bob")
    assert op(core, b).operator == "bob"
    with pytest.raises(NoSelection):
        op(core, a)


def test_operate_with_someone_elses_selection_is_refused_and_does_not_consume_it(core: ControlCore) -> None:
    a = sel(core, who="alice")
    with pytest.raises(SelectedByOther):
        op(core, a, who="bob")
    assert op(core, a).id == a.id


def test_cancel_rules(core: ControlCore) -> None:
    a = sel(core, who="alice")
    with pytest.raises(SelectedByOther):
        core.cancel(a.id, "bob")
    with pytest.raises(NoSelection):
        core.cancel("nope", "alice")
    core.cancel(a.id, "alice")
    with pytest.raises(NoSelection):
        core.cancel(a.id, "alice")


def test_same_operator_reselecting_replaces_their_selection(core: ControlCore) -> None:
    a = sel(core, action="OPEN")
    b = sel(core, action="OPEN")
    assert a.id != b.id
    assert core.selections("sw_b2") == [b]
    with pytest.raises(NoSelection):
        op(core, a)
    assert op(core, b).id == b.id


def test_selections_on_different_devices_are_independent(core: ControlCore) -> None:
    a = sel(core, "sw_b2", who="alice")
    b = sel(core, "sw_b1", who="bob")
    assert op(core, b).operator == "bob"
    assert op(core, a).operator == "alice"


# -- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "action", "value"),
    [("sw_b1", "OPEN", None), ("sw_b2", "CLOSE", None), ("sw_b2", "BOGUS", None)],
)
def test_operate_must_match_the_selection(core: ControlCore, device: str, action: str, value) -> None:
    s = sel(core)
    with pytest.raises(ParametersDiffer) as e:
        core.operate(s.id, device, action, value, "alice", switch_states=STATES)
    assert e.value.code == "PARAMETERS_DIFFER"
    with pytest.raises(NoSelection):  # the selection is void (DNP3 NO_SELECT)
        op(core, s)


def test_operate_value_must_match(core: ControlCore) -> None:
    s = sel(core, "tr1", "SET", 3)
    with pytest.raises(ParametersDiffer):
        core.operate(s.id, "tr1", "SET", 4, "alice", switch_states=STATES)
    s = sel(core, "tr1", "SET", 3)
    assert core.operate(s.id, "tr1", "SET", 3.0, "alice", switch_states=STATES).value == 3.0
    s = sel(core, "tr1", "SET", 3)
    with pytest.raises(ParametersDiffer):
        core.operate(s.id, "tr1", "SET", None, "alice", switch_states=STATES)


# -- validation ------------------------------------------------------------------------------------


def test_unknown_device_is_not_found(core: ControlCore) -> None:
    with pytest.raises(NotFound) as e:
        sel(core, "nope")
    assert e.value.code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("device", "action", "value", "hint"),
    [
        ("tr1", "OPEN", None, "tap changer"),
        ("tr1", "SET", None, "needs a value"),
        ("tr1", "SET", 9, "out of range"),
        ("tr1", "SET", 1.5, "integer"),
        ("tr1", "RAISE", 1, "takes no value"),
        ("sw_b2", "OPEN", 1.0, "takes no value"),
        ("sw_b2", "RAISE", None, "does not apply"),
        ("sw_b2", "OPEN", float("nan"), "finite"),
        ("sw_b2", "OPEN", True, "finite"),
        ("fuse5", "OPEN", None, "no remote operating mechanism"),
        ("dis3", "CLOSE", None, "no remote operating mechanism"),
        ("cap4", "SET", 4, "out of range"),
        ("cap4", "CLOSE", 1, "takes no value"),
        ("pv3", "SET", 0.4, "between 0 and 0.3"),
        ("pv3", "OPEN", None, "does not apply"),
        ("bess5", "SET", None, "p_mw set point"),
        ("b2", "OPEN", None, "not a controllable device"),
        ("l1", "CLOSE", None, "not a controllable device"),
        ("sw_b2", "TOGGLE", None, "unknown action"),
    ],
)
def test_bad_actions(core: ControlCore, device: str, action: str, value, hint: str) -> None:
    with pytest.raises(BadAction) as e:
        sel(core, device, action, value)
    assert e.value.code == "BAD_INPUT"
    assert e.value.element_id == device
    assert hint in str(e.value)


def test_transformer_without_tap_changer_is_refused() -> None:
    f = grids.with_substation_transformer()
    f = replace(f, transformers=(replace(f.transformers[0], tap_step_percent=None),))
    with pytest.raises(BadAction, match="no tap changer"):
        ControlCore(f).select("tr1", "RAISE", None, "alice", switch_states={})


@pytest.mark.parametrize(
    ("device", "action", "value"),
    [("tr1", "RAISE", None), ("tr1", "LOWER", None), ("tr1", "SET", -8), ("cap4", "RAISE", None),
     ("cap4", "SET", 0), ("cap4", "OPEN", None), ("pv3", "SET", 0.3), ("bess5", "SET", -0.5)],
)
def test_good_non_switch_actions(core: ControlCore, device: str, action: str, value) -> None:
    s = sel(core, device, action, value)
    assert op(core, s).action is ControlAction(action)


def test_missing_operator_is_bad_input(core: ControlCore) -> None:
    with pytest.raises(BadAction, match="operator"):
        sel(core, who=" ")


def test_bad_timeout() -> None:
    with pytest.raises(DmsError):
        ControlCore(grids.radial(), select_timeout_s=0)


# -- tags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [TagKind.DO_NOT_OPERATE, TagKind.HOLD, TagKind.GROUND])
def test_blocking_tags_refuse_select(core: ControlCore, kind: TagKind) -> None:
    core.set_tag("sw_b2", kind, "crew on l2", "carol")
    with pytest.raises(DeviceTagged) as e:
        sel(core)
    assert e.value.code == "DEVICE_TAGGED"
    assert str(kind) in str(e.value) and "carol" in str(e.value)


def test_warning_tag_does_not_block(core: ControlCore) -> None:
    t = core.set_tag("sw_b2", "WARNING", "sticky mechanism", "carol")
    assert not t.blocks_control
    s = sel(core)
    assert op(core, s).id == s.id


def test_tag_lists_every_blocking_kind_and_who_set_it(core: ControlCore) -> None:
    core.set_tag("sw_b2", TagKind.HOLD, "hot-line work", "carol")
    core.set_tag("sw_b2", TagKind.DO_NOT_OPERATE, "switching order 12", "dave")
    core.set_tag("sw_b2", TagKind.WARNING, "note", "erin")
    with pytest.raises(DeviceTagged) as e:
        sel(core)
    msg = str(e.value)
    assert "HOLD set by carol" in msg and "DO_NOT_OPERATE set by dave" in msg and "erin" not in msg


def test_tagging_revokes_live_selection_and_operate_says_tagged(core: ControlCore) -> None:
    s = sel(core)
    core.set_tag("sw_b2", TagKind.HOLD, "hot-line work", "carol")
    assert core.selections() == []
    with pytest.raises(DeviceTagged):
        op(core, s)
    with pytest.raises(NoSelection):
        op(core, s)


def test_revoked_selection_after_tag_removed_still_says_tagged(core: ControlCore) -> None:
    s = sel(core)
    t = core.set_tag("sw_b2", TagKind.HOLD, "hot-line work", "carol")
    core.remove_tag(t.id, "carol")
    with pytest.raises(DeviceTagged, match="tagged after it was selected"):
        op(core, s)
    assert op(core, sel(core)).device_id == "sw_b2"


def test_tagged_since_select_even_without_revocation(core: ControlCore) -> None:
    s = sel(core)
    core.load_tags([Tag("t1", "sw_b2", TagKind.DO_NOT_OPERATE, "restored", "carol", T0)])
    with pytest.raises(DeviceTagged):
        op(core, s)
    with pytest.raises(NoSelection):
        op(core, s)


def test_warning_tag_keeps_selection(core: ControlCore) -> None:
    s = sel(core)
    core.set_tag("sw_b2", TagKind.WARNING, "note", "carol")
    assert op(core, s).id == s.id


def test_remove_tag_and_list_and_load(core: ControlCore) -> None:
    t1 = core.set_tag("sw_b2", TagKind.HOLD, "work", "carol")
    t2 = core.set_tag("sw_b1", TagKind.WARNING, "note", "carol")
    assert core.tags() == [t1, t2]
    assert core.tags("sw_b1") == [t2]
    assert core.remove_tag(t1.id, "carol") == t1
    with pytest.raises(NotFound):
        core.remove_tag(t1.id, "carol")
    sel(core)  # no longer blocked
    core.load_tags([t1])
    assert core.tags() == [t1]
    with pytest.raises(DeviceTagged):
        sel(core, who="zed")


def test_tag_input_checks(core: ControlCore) -> None:
    with pytest.raises(NotFound):
        core.set_tag("nope", TagKind.HOLD, "x", "carol")
    with pytest.raises(BadAction, match="reason"):
        core.set_tag("sw_b2", TagKind.HOLD, " ", "carol")
    with pytest.raises(BadAction, match="unknown tag kind"):
        core.set_tag("sw_b2", "LOCK", "x", "carol")


# -- interlocks through the core -------------------------------------------------------------------


def test_interlock_at_select(core: ControlCore) -> None:
    with pytest.raises(Interlock) as e:
        sel(core, "sw_b2", "CLOSE", switch_states={"sw_b2": True}, faulted_elements={"l3"})
    assert e.value.code == "INTERLOCK"
    assert "closing onto a faulted section (line l3)" in str(e.value)


def test_interlock_rechecked_at_operate_and_consumes(core: ControlCore) -> None:
    s = sel(core, "sw_b2", "CLOSE", switch_states={"sw_b2": True})
    with pytest.raises(Interlock):
        op(core, s, switch_states={"sw_b2": True}, faulted_elements={"l2"})
    with pytest.raises(NoSelection):
        op(core, s, switch_states={"sw_b2": True})


def test_ground_tag_on_another_switch_blocks_energizing_its_section(core: ControlCore) -> None:
    # sw_b1 (breaker) is open; grounds hang at sw_b2 (b2 / l2): closing the breaker would energize them.
    core.set_tag("sw_b2", TagKind.GROUND, "portable grounds", "carol")
    with pytest.raises(Interlock, match="grounded section"):
        sel(core, "sw_b1", "CLOSE", switch_states={"sw_b1": True})


def test_interlock_not_checked_for_other_operators_race(core: ControlCore) -> None:
    sel(core, "sw_b2", "CLOSE", switch_states={"sw_b2": True})
    with pytest.raises(SelectedByOther):
        sel(core, "sw_b2", "CLOSE", who="bob", switch_states={"sw_b2": True}, faulted_elements={"l2"})


# -- interlock rules, pure -------------------------------------------------------------------------


def test_close_onto_fault_only_when_it_energizes_the_fault() -> None:
    f = grids.radial()
    tripped = {"sw_b1": True, "sw_b2": True}
    # Breaker closes: l2 stays dead behind open sw_b2, the fault on l3 is not reached.
    assert check_interlocks(f, "sw_b1", "CLOSE", tripped, faulted_elements={"l3"}) is None
    reason = check_interlocks(f, "sw_b1", "CLOSE", {"sw_b1": True}, faulted_elements={"l3"})
    assert reason is not None and "faulted section (line l3)" in reason
    reason = check_interlocks(f, "sw_b2", "CLOSE", {"sw_b2": True}, faulted_elements={"l2"})
    assert reason is not None and "line l2" in reason
    assert check_interlocks(f, "sw_b2", "CLOSE", {"sw_b2": True}, faulted_elements={"l4"}) is None
    # a faulted bus
    assert check_interlocks(f, "sw_b2", "CLOSE", {"sw_b2": True}, faulted_elements={"b4"}) is not None


def test_close_onto_grounds() -> None:
    f = grids.radial()
    reason = check_interlocks(f, "sw_b2", "CLOSE", {"sw_b2": True}, grounded_elements={"b3"})
    assert reason is not None and "closing onto a grounded section (bus b3)" in reason
    assert check_interlocks(f, "sw_b2", "CLOSE", {"sw_b2": True}, grounded_elements={"b5"}) is None


def test_paralleling_sources() -> None:
    f = grids.two_feeders_with_tie()
    reason = check_interlocks(f, "tie", "CLOSE", {})
    assert reason == ("paralleling sources s1 and s2 by closing tie is not allowed on this feeder; "
                      "transfer load open-transition (open the other tie point first)")
    assert check_interlocks(f, "tie", "CLOSE", {}, allow_parallel_sources=True) is None
    # Open-transition transfer: brk_c open first, then the tie may close.
    assert check_interlocks(f, "tie", "CLOSE", {"brk_c": True}) is None
    # A second close into an already paralleled pair adds nothing new.
    assert check_interlocks(f, "brk_c", "CLOSE", {"brk_c": True, "tie": False},
                            allow_parallel_sources=False) is not None


def test_loops() -> None:
    f = grids.ring_with_tie()
    reason = check_interlocks(f, "tie", "CLOSE", {})
    assert reason == "closing tie would create a loop (meshed operation not allowed on this feeder)"
    assert check_interlocks(f, "tie", "CLOSE", {}, allow_loops=True) is None


def test_core_honours_allow_flags(clock: Clock) -> None:
    core = ControlCore(grids.ring_with_tie(), now=clock, allow_loops=True)
    assert core.select("tie", "CLOSE", None, "alice", switch_states={}).device_id == "tie"
    core = ControlCore(grids.two_feeders_with_tie(), now=clock, allow_parallel_sources=True)
    assert core.select("tie", "CLOSE", None, "alice", switch_states={}).device_id == "tie"
    core = ControlCore(grids.ring_with_tie(), now=clock)
    with pytest.raises(Interlock, match="loop"):
        core.select("tie", "CLOSE", None, "alice", switch_states={})


def test_disconnector_cannot_break_or_make_load() -> None:
    f = radial_plus()
    reason = check_interlocks(f, "dis3", "OPEN", {})
    assert reason is not None
    assert "disconnector dis3 cannot break load current; open the upstream breaker" in reason
    # Dead downstream (sw_b2 open upstream): the disconnector may open.
    assert check_interlocks(f, "dis3", "OPEN", {"sw_b2": True}) is None
    # Closing it while upstream is live would pick up b4's load.
    reason = check_interlocks(f, "dis3", "CLOSE", {"dis3": True})
    assert reason is not None and "cannot make load current" in reason
    assert check_interlocks(f, "dis3", "CLOSE", {"dis3": True, "sw_b2": True}) is None


def test_open_of_load_break_devices_and_non_switches_has_no_interlock() -> None:
    f = radial_plus()
    assert check_interlocks(f, "sw_b2", "OPEN", {}) is None
    assert check_interlocks(f, "sw_b1", "OPEN", {}) is None
    assert check_interlocks(f, "tr1", "RAISE", {}) is None
    assert check_interlocks(f, "sw_b2", "CLOSE", {}) is None  # already closed: nothing changes


# -- errors of the actor's part --------------------------------------------------------------------


def test_actor_side_errors_have_codes_and_remedies() -> None:
    e1 = DeviceUnreachable("sw_b2", "timeout")
    assert e1.code == "DEVICE_UNREACHABLE" and "not retried" in str(e1) and e1.element_id == "sw_b2"
    e2 = NotConfirmed("sw_b2", "OPEN", 5)
    assert e2.code == "NOT_CONFIRMED" and "Verify the device position" in str(e2)
    assert isinstance(e1, DmsError) and isinstance(e2, DmsError)


# -- tags: who may remove them (#17.11) -------------------------------------------------------------


def test_only_the_holder_or_an_override_removes_a_tag(core: ControlCore) -> None:
    from actors.cores.control import TagHeldByOther

    t = core.set_tag("sw_b2", TagKind.DO_NOT_OPERATE, "crew on line", "carol")
    with pytest.raises(TagHeldByOther, match=r"held by carol; only its holder or a SUPERVISOR") as e:
        core.remove_tag(t.id, "mallory")
    assert e.value.code == "TAG_HELD_BY_OTHER"
    assert core.tags() == [t]  # still in force
    assert core.remove_tag(t.id, "sam", may_override=True) == t
    t2 = core.set_tag("sw_b2", TagKind.HOLD, "work", "carol")
    assert core.remove_tag(t2.id, "carol") == t2


def test_device_tagged_message_names_who_may_remove(core: ControlCore) -> None:
    core.set_tag("sw_b2", TagKind.DO_NOT_OPERATE, "crew on line", "carol")
    with pytest.raises(DeviceTagged, match=r"tag holder \(or a SUPERVISOR\) removes"):
        sel(core)


# -- intents found without an outcome after a restart (#17.15) --------------------------------------


@pytest.mark.parametrize(("action", "value", "status_open", "tap", "want"), [
    ("CLOSE", None, False, None, "CONFIRMED_AFTER_RESTART"),
    ("CLOSE", None, True, None, "NOT_CONFIRMED"),
    ("OPEN", None, True, None, "CONFIRMED_AFTER_RESTART"),
    ("OPEN", None, None, None, "NOT_CONFIRMED"),  # no status telemetry: cannot tell
    ("SET", 3.0, None, 3.0, "CONFIRMED_AFTER_RESTART"),
    ("SET", 3.0, None, 2.0, "NOT_CONFIRMED"),
    ("RAISE", None, None, 4.0, "NOT_CONFIRMED"),  # the target is unknown after the fact
    ("SET", 0.5, None, None, "NOT_CONFIRMED"),  # a DER set point: no telemetry confirms it
    ("JUMP", None, True, None, "NOT_CONFIRMED"),
])
def test_reconciled_status(action: str, value: float | None, status_open: bool | None, tap: float | None,
                           want: str) -> None:
    from actors.cores.control import reconciled_status

    status, reason = reconciled_status(action, value, status_open, tap)
    assert status == want and reason
