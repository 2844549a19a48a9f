"""Typed model of a distribution feeder (the system of record's shape).

The classes follow the IEC 61970/61968 CIM concepts a utility's engineers know, simplified to what
a feeder head-end needs: ``Source`` (cim:EnergySource / substation bus), ``Bus``
(cim:ConnectivityNode/TopologicalNode), ``Line`` (cim:ACLineSegment), ``Transformer``
(cim:PowerTransformer with its tap changer), ``Switch`` (cim:Breaker, cim:Recloser,
cim:Sectionaliser, cim:LoadBreakSwitch, cim:Fuse, cim:Disconnector), ``Load``
(cim:EnergyConsumer with its customer count), ``Der`` (cim:PowerElectronicsUnit / generating unit),
``Capacitor`` (cim:LinearShuntCompensator), ``MeasurementPoint`` (cim:Measurement) and
``FaultIndicator`` (cim:FaultIndicator).

Every quantity carries its unit in its name (``p_mw``, ``vn_kv``, ``max_i_ka``). Instances are
frozen: live values (switch positions, load that moves) are held by the feeder actor as state,
never by mutating the model. Ids are strings unique within a feeder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum


class SwitchKind(StrEnum):
    BREAKER = "BREAKER"
    RECLOSER = "RECLOSER"
    SECTIONALIZER = "SECTIONALIZER"
    LOAD_BREAK_SWITCH = "LOAD_BREAK_SWITCH"
    FUSE = "FUSE"
    DISCONNECTOR = "DISCONNECTOR"

    @property
    def interrupts_fault_current(self) -> bool:
        """Breakers, reclosers and fuses can clear a fault; the others must not open under one."""
        return self in (SwitchKind.BREAKER, SwitchKind.RECLOSER, SwitchKind.FUSE)

    @property
    def remote_controllable(self) -> bool:
        """Fuses and manual disconnectors have no remote operating mechanism."""
        return self not in (SwitchKind.FUSE, SwitchKind.DISCONNECTOR)


class ElementType(StrEnum):
    """What a switch sits on, besides its bus (pandapower's ``et``: 'l', 't', 'b')."""

    LINE = "LINE"
    TRANSFORMER = "TRANSFORMER"
    BUS = "BUS"


class DerKind(StrEnum):
    PV = "PV"
    WIND = "WIND"
    STORAGE = "STORAGE"
    CHP = "CHP"
    FUEL_CELL = "FUEL_CELL"
    OTHER = "OTHER"


class Quantity(StrEnum):
    """What a measurement point measures."""

    VM_PU = "VM_PU"
    P_MW = "P_MW"
    Q_MVAR = "Q_MVAR"
    I_KA = "I_KA"
    STATUS = "STATUS"
    TAP_POS = "TAP_POS"
    CAP_STEP = "CAP_STEP"  # steps of a capacitor bank in service


@dataclass(frozen=True, slots=True)
class Limits:
    """Operating limits of a feeder: a normal and an emergency band.

    Defaults are ANSI C84.1 Range A (0.95-1.05 pu) and Range B (0.917-1.058 pu), 100 % / 120 %
    thermal loading. Published test feeders that sit outside Range A in their base case carry
    limits that accept their own normal state.
    """

    vm_min_pu: float = 0.95
    vm_max_pu: float = 1.05
    emergency_vm_min_pu: float = 0.917
    emergency_vm_max_pu: float = 1.058
    max_loading_percent: float = 100.0
    emergency_max_loading_percent: float = 120.0


@dataclass(frozen=True, slots=True)
class Source:
    """A supply point: a substation bus held at ``vm_pu`` (pandapower ext_grid)."""

    id: str
    bus_id: str
    name: str = ""
    vm_pu: float = 1.0
    va_degree: float = 0.0
    s_sc_max_mva: float | None = None
    rx_max: float | None = None


@dataclass(frozen=True, slots=True)
class Bus:
    id: str
    vn_kv: float
    name: str = ""
    # Geographic coordinates (WGS84), when known; used for maps and the public outage feed.
    lon: float | None = None
    lat: float | None = None
    in_service: bool = True


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    from_bus_id: str
    to_bus_id: str
    length_km: float
    r_ohm_per_km: float
    x_ohm_per_km: float
    c_nf_per_km: float
    max_i_ka: float
    name: str = ""
    r0_ohm_per_km: float | None = None
    x0_ohm_per_km: float | None = None
    c0_nf_per_km: float | None = None
    parallel: int = 1
    in_service: bool = True


@dataclass(frozen=True, slots=True)
class Transformer:
    """Two-winding transformer; a tap changer makes it a voltage regulator."""

    id: str
    hv_bus_id: str
    lv_bus_id: str
    sn_mva: float
    vn_hv_kv: float
    vn_lv_kv: float
    vk_percent: float
    vkr_percent: float
    name: str = ""
    pfe_kw: float = 0.0
    i0_percent: float = 0.0
    shift_degree: float = 0.0
    tap_side: str | None = None  # "hv" or "lv"
    tap_neutral: int | None = None
    tap_min: int | None = None
    tap_max: int | None = None
    tap_step_percent: float | None = None
    tap_pos: int | None = None
    vector_group: str | None = None
    in_service: bool = True
    # Automatic voltage control of the tap changer (an OLTC at a substation, or a line voltage
    # regulator when ``regulator`` is set: a 1:1 transformer on a line). The local controller holds
    # the regulated voltage within ``band_centre_pu`` +- ``bandwidth_pu``/2 at the load centre seen
    # through line-drop compensation (``ldc_r_ohm``/``ldc_x_ohm``, ohms on the lv side); Volt/VAR
    # optimisation pushes these settings as the fallback for when the head-end is away.
    regulator: bool = False
    band_centre_pu: float | None = None
    bandwidth_pu: float | None = None
    ldc_r_ohm: float = 0.0
    ldc_x_ohm: float = 0.0

    @property
    def has_tap_changer(self) -> bool:
        return self.tap_step_percent is not None and self.tap_min is not None and self.tap_max is not None


@dataclass(frozen=True, slots=True)
class Switch:
    """A switching device at ``bus_id`` on ``element_id`` (a line, a transformer or another bus).

    ``normally_open`` is the planned (normal) state, ``is_open`` the state last recorded.
    """

    id: str
    kind: SwitchKind
    bus_id: str
    element_type: ElementType
    element_id: str
    is_open: bool = False
    normally_open: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class Load:
    id: str
    bus_id: str
    p_mw: float
    q_mvar: float
    customers: int
    name: str = ""
    in_service: bool = True


@dataclass(frozen=True, slots=True)
class Der:
    """Distributed energy resource: ``p_mw``/``q_mvar`` are the present set point, ``sn_mva`` the rating.

    Storage uses the load sign convention of pandapower's storage element only inside the solver;
    here ``p_mw`` > 0 always means injection into the grid.
    """

    id: str
    bus_id: str
    kind: DerKind
    sn_mva: float
    p_mw: float
    q_mvar: float = 0.0
    name: str = ""
    max_e_mwh: float | None = None  # storage only
    in_service: bool = True
    # DER management (#12): capability beyond the rating, storage limits, IEEE 1547-2018 category
    # and the SunSpec Modbus unit id the inverter answers on (None: derived from its position).
    p_max_mw: float | None = None  # active power capability; None: sn_mva
    q_max_mvar: float | None = None  # reactive capability (inject and absorb); None: 0.44 x sn_mva (cat. B)
    soc_min_pct: float = 10.0  # storage only: the state of charge it is never discharged below
    soc_max_pct: float = 95.0  # storage only: the state of charge it is never charged above
    ieee1547_category: str = "B"  # normal performance category A or B (volt-var defaults)
    sunspec_unit_id: int | None = None


@dataclass(frozen=True, slots=True)
class Capacitor:
    """Shunt capacitor bank; ``q_mvar`` is the rated reactive power per step (generation is positive).

    A switched bank has ``steps`` > 1 (``step`` of them in service, 0..``steps``). With
    ``local_control`` its own controller switches one step in below ``v_on_pu`` and one out above
    ``v_off_pu`` (at its bus) when nobody commands it: the fallback Volt/VAR optimisation pushes.
    """

    id: str
    bus_id: str
    q_mvar: float
    name: str = ""
    steps: int = 1
    step: int = 1  # steps in service
    in_service: bool = True
    local_control: bool = False
    v_on_pu: float | None = None
    v_off_pu: float | None = None


@dataclass(frozen=True, slots=True)
class MeasurementPoint:
    """A telemetered value; the protocol layer binds it to a register or node through a point map."""

    id: str
    element_id: str
    quantity: Quantity
    name: str = ""


@dataclass(frozen=True, slots=True)
class FaultIndicator:
    """Senses fault current on ``line_id`` at the ``bus_id`` end (direction: away from that bus)."""

    id: str
    line_id: str
    bus_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Feeder:
    """One feeder: everything the head-end knows of its network, immutable.

    The collections are tuples so a feeder can be hashed, compared and shipped between processes.
    """

    id: str
    name: str
    sources: tuple[Source, ...] = ()
    buses: tuple[Bus, ...] = ()
    lines: tuple[Line, ...] = ()
    transformers: tuple[Transformer, ...] = ()
    switches: tuple[Switch, ...] = ()
    loads: tuple[Load, ...] = ()
    ders: tuple[Der, ...] = ()
    capacitors: tuple[Capacitor, ...] = ()
    measurement_points: tuple[MeasurementPoint, ...] = ()
    fault_indicators: tuple[FaultIndicator, ...] = ()
    limits: Limits = field(default_factory=Limits)
    # Base apparent power and frequency for the solver.
    sn_mva: float = 1.0
    f_hz: float = 50.0

    def elements(self) -> Iterator[object]:
        yield from self.sources
        yield from self.buses
        yield from self.lines
        yield from self.transformers
        yield from self.switches
        yield from self.loads
        yield from self.ders
        yield from self.capacitors
        yield from self.measurement_points
        yield from self.fault_indicators

    def bus(self, bus_id: str) -> Bus:
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(bus_id)

    def switch(self, switch_id: str) -> Switch:
        for s in self.switches:
            if s.id == switch_id:
                return s
        raise KeyError(switch_id)

    @property
    def customers(self) -> int:
        return sum(ld.customers for ld in self.loads)

    def with_switch_states(self, states: dict[str, bool]) -> Feeder:
        """A copy with ``is_open`` replaced for the switch ids in ``states`` (id -> is_open)."""
        return replace(
            self,
            switches=tuple(replace(s, is_open=states.get(s.id, s.is_open)) for s in self.switches),
        )
