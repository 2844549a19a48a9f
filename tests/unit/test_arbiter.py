"""Who may operate which device (:class:`actors.arbiter.Arbiter`): operators and tags first, then FDIR,
then the optimisers; a command in flight is never recalled."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.arbiter import Arbiter, DeviceHeld, Priority
from actors.cores.control import ControlAction, ControlError, Selection, Tag, TagKind

APPS = ("fdir", "volt_var", "der_mgmt")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Core:
    """What the control core holds now: tags and selections per device."""

    def __init__(self) -> None:
        self.tags: dict[str, list[Tag]] = {}
        self.selections: dict[str, list[Selection]] = {}

    def tag(self, device_id: str, kind: TagKind, set_by: str, reason: str = "crew on site") -> None:
        self.tags.setdefault(device_id, []).append(Tag(f"t{len(self.tags)}", device_id, kind, reason, set_by, T0))

    def select(self, device_id: str, operator: str) -> None:
        self.selections.setdefault(device_id, []).append(
            Selection("secret", device_id, ControlAction.OPEN, None, operator, 0.0, 30.0, T0))


@pytest.fixture
def core() -> Core:
    return Core()


@pytest.fixture
def arbiter(core: Core) -> Arbiter:
    clock = iter(range(1000))
    return Arbiter(tags=lambda d: core.tags.get(d, ()), selections=lambda d: core.selections.get(d, ()),
                   application_names=lambda: APPS, now=lambda: float(next(clock)))


def refused(arbiter: Arbiter, device_id: str, holder: str, priority: Priority) -> DeviceHeld:
    with pytest.raises(DeviceHeld) as info:
        arbiter.acquire(device_id, holder, priority)
    err = info.value
    assert isinstance(err, ControlError)
    assert err.code == "DEVICE_HELD" and err.element_id == device_id
    assert "nothing was sent" in err.message
    return err


def test_a_free_device_is_claimed(arbiter: Arbiter) -> None:
    claim = arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    assert (claim.device_id, claim.holder, claim.priority, claim.in_flight) == ("sw1", "volt_var",
                                                                                 Priority.OPTIMISER, False)
    assert arbiter.holder("sw1") == "volt_var"
    assert arbiter.claims() == [claim]


@pytest.mark.parametrize("kind", [TagKind.DO_NOT_OPERATE, TagKind.HOLD, TagKind.GROUND])
def test_a_blocking_tag_refuses_every_application_naming_who_set_it(arbiter: Arbiter, core: Core,
                                                                    kind: TagKind) -> None:
    core.tag("sw1", kind, "alice", reason="line crew at pole 17")
    for app, prio in (("fdir", Priority.FDIR), ("volt_var", Priority.OPTIMISER)):
        err = refused(arbiter, "sw1", app, prio)
        assert err.held_by == "alice"
        assert "alice" in err.message and str(kind) in err.message and "line crew at pole 17" in err.message
    assert arbiter.claims() == []


def test_a_warning_tag_does_not_block(arbiter: Arbiter, core: Core) -> None:
    core.tag("sw1", TagKind.WARNING, "alice")
    assert arbiter.acquire("sw1", "fdir", Priority.FDIR).holder == "fdir"


def test_an_operators_selection_refuses_applications(arbiter: Arbiter, core: Core) -> None:
    core.select("sw1", "bob")
    err = refused(arbiter, "sw1", "fdir", Priority.FDIR)
    assert err.held_by == "bob" and "bob" in err.message and "selected by an operator" in err.message


def test_an_applications_own_selection_does_not_block_it(arbiter: Arbiter, core: Core) -> None:
    core.select("sw1", "fdir")  # applications select under their own identity
    assert arbiter.acquire("sw1", "fdir", Priority.FDIR).holder == "fdir"


def test_an_operators_command_in_flight_refuses_applications(arbiter: Arbiter) -> None:
    arbiter.operator_sending("sw1", "bob")
    assert arbiter.holder("sw1") == "bob"
    err = refused(arbiter, "sw1", "fdir", Priority.FDIR)
    assert err.held_by == "bob" and "in flight" in err.message
    arbiter.operator_done("sw1")
    assert arbiter.holder("sw1") is None
    assert arbiter.acquire("sw1", "fdir", Priority.FDIR).holder == "fdir"


def test_an_operators_send_withdraws_a_claim_not_in_flight(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    arbiter.operator_sending("sw1", "bob")
    assert arbiter.claims() == []
    assert arbiter.holder("sw1") == "bob"


def test_fdir_preempts_an_optimisers_claim_not_in_flight(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    claim = arbiter.acquire("sw1", "fdir", Priority.FDIR)
    assert claim.holder == "fdir"
    assert arbiter.holder("sw1") == "fdir"
    assert [c.holder for c in arbiter.claims()] == ["fdir"]
    # The optimiser's late bookkeeping does not touch FDIR's claim.
    arbiter.sent("sw1", "volt_var")
    arbiter.release("sw1", "volt_var")
    assert arbiter.claims() == [claim]
    # And the optimiser is refused now, naming FDIR.
    err = refused(arbiter, "sw1", "volt_var", Priority.OPTIMISER)
    assert err.held_by == "fdir" and "FDIR" in err.message


def test_a_claim_in_flight_is_never_preempted(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    arbiter.sent("sw1", "volt_var")
    [claim] = arbiter.claims()
    assert claim.in_flight
    err = refused(arbiter, "sw1", "fdir", Priority.FDIR)
    assert err.held_by == "volt_var" and "volt_var" in err.message and "in flight" in err.message
    assert arbiter.holder("sw1") == "volt_var"


def test_a_claim_in_flight_stays_in_flight_when_its_holder_asks_again(arbiter: Arbiter) -> None:
    # A second command of the same application while its first is in flight must not turn the claim
    # back into one that FDIR may withdraw (the first command is still out).
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    arbiter.sent("sw1", "volt_var")
    err = refused(arbiter, "sw1", "volt_var", Priority.OPTIMISER)
    assert err.held_by == "volt_var"
    assert [c.in_flight for c in arbiter.claims()] == [True]
    refused(arbiter, "sw1", "fdir", Priority.FDIR)


def test_equal_priority_from_another_application_is_refused(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    err = refused(arbiter, "sw1", "der_mgmt", Priority.OPTIMISER)
    assert err.held_by == "volt_var" and "OPTIMISER" in err.message
    # A weaker one is refused as well.
    arbiter.acquire("sw2", "fdir", Priority.FDIR)
    assert refused(arbiter, "sw2", "volt_var", Priority.OPTIMISER).held_by == "fdir"


def test_the_holder_may_claim_again_before_sending(arbiter: Arbiter) -> None:
    first = arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    again = arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    assert again.holder == "volt_var" and again.since >= first.since
    assert len(arbiter.claims()) == 1


def test_release_frees_the_device_only_for_its_holder(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "volt_var", Priority.OPTIMISER)
    arbiter.sent("sw1", "volt_var")
    arbiter.release("sw1", "der_mgmt")  # not the holder: nothing happens
    assert arbiter.holder("sw1") == "volt_var"
    arbiter.release("sw1", "volt_var")
    assert arbiter.holder("sw1") is None and arbiter.claims() == []
    assert arbiter.acquire("sw1", "der_mgmt", Priority.OPTIMISER).holder == "der_mgmt"
    arbiter.release("sw9", "der_mgmt")  # no claim: no error


def test_operator_selecting_withdraws_a_claim_not_in_flight(arbiter: Arbiter) -> None:
    assert arbiter.operator_selecting("sw1") is None  # nothing held
    arbiter.acquire("sw1", "fdir", Priority.FDIR)
    assert arbiter.operator_selecting("sw1") is None
    assert arbiter.claims() == []


def test_operator_selecting_names_the_application_in_flight(arbiter: Arbiter) -> None:
    arbiter.acquire("sw1", "fdir", Priority.FDIR)
    arbiter.sent("sw1", "fdir")
    assert arbiter.operator_selecting("sw1") == "fdir"
    assert [c.holder for c in arbiter.claims()] == ["fdir"]  # kept: the select is refused instead


def test_claims_are_sorted_by_device(arbiter: Arbiter) -> None:
    for dev in ("sw3", "sw1", "sw2"):
        arbiter.acquire(dev, "volt_var", Priority.OPTIMISER)
    assert [c.device_id for c in arbiter.claims()] == ["sw1", "sw2", "sw3"]
