"""Small hand-made feeders for unit tests (reusable by every core's tests).

All are 12.47 kV overhead feeders with realistic parameters, valid under
``graph_schema.validate.validate_feeder`` unless the name says otherwise.

``radial()``::

    src1 - b1 --sw_b1[BREAKER]-- l1 -- b2 --sw_b2-- l2 -- b3 -- l3 -- b4
                                         |
                                         l4 -- b5

``two_feeders_with_tie()``: two radial feeders from two substations joined at their ends by a
normally open tie switch::

    s1 - a1 --brk_a-- la1 -- a2 -- la2 -- a3 --tie(open)-- lt -- c3 -- lc2 -- c2 -- lc1 --brk_c-- c1 - s2

``ring_with_tie()``: one source, two branches closed into a ring by a normally open tie.

``with_island()``: ``radial()`` plus two buses joined by a line and connected to nothing else.
"""

from __future__ import annotations

from dataclasses import replace

from graph_schema.model import (
    Bus,
    Capacitor,
    Der,
    DerKind,
    ElementType,
    FaultIndicator,
    Feeder,
    Line,
    Load,
    MeasurementPoint,
    Quantity,
    Source,
    Switch,
    SwitchKind,
    Transformer,
)

VN_KV = 12.47


def bus(bus_id: str, vn_kv: float = VN_KV) -> Bus:
    return Bus(id=bus_id, vn_kv=vn_kv, name=bus_id)


def line(line_id: str, a: str, b: str, length_km: float = 1.0) -> Line:
    """A 336 kcmil ACSR-like overhead line."""
    return Line(
        id=line_id,
        from_bus_id=a,
        to_bus_id=b,
        length_km=length_km,
        r_ohm_per_km=0.19,
        x_ohm_per_km=0.38,
        c_nf_per_km=10.0,
        max_i_ka=0.4,
    )


def switch(
    switch_id: str,
    bus_id: str,
    line_id: str,
    *,
    kind: SwitchKind = SwitchKind.SECTIONALIZER,
    is_open: bool = False,
    normally_open: bool | None = None,
) -> Switch:
    return Switch(
        id=switch_id,
        kind=kind,
        bus_id=bus_id,
        element_type=ElementType.LINE,
        element_id=line_id,
        is_open=is_open,
        normally_open=is_open if normally_open is None else normally_open,
    )


def load(load_id: str, bus_id: str, p_mw: float = 0.5, customers: int = 100) -> Load:
    return Load(id=load_id, bus_id=bus_id, p_mw=p_mw, q_mvar=p_mw * 0.3, customers=customers)


def radial() -> Feeder:
    return Feeder(
        id="radial",
        name="Hand-made radial feeder",
        sources=(Source(id="src1", bus_id="b1"),),
        buses=tuple(bus(f"b{i}") for i in range(1, 6)),
        lines=(
            line("l1", "b1", "b2"),
            line("l2", "b2", "b3"),
            line("l3", "b3", "b4"),
            line("l4", "b2", "b5"),
        ),
        switches=(
            switch("sw_b1", "b1", "l1", kind=SwitchKind.BREAKER),
            switch("sw_b2", "b2", "l2"),
        ),
        loads=(load("ld2", "b2"), load("ld3", "b3"), load("ld4", "b4"), load("ld5", "b5", customers=50)),
        ders=(Der(id="pv3", bus_id="b3", kind=DerKind.PV, sn_mva=0.3, p_mw=0.2),),
        capacitors=(Capacitor(id="cap4", bus_id="b4", q_mvar=0.3),),
        measurement_points=(MeasurementPoint(id="mp_l1_p", element_id="l1", quantity=Quantity.P_MW),),
        fault_indicators=(FaultIndicator(id="fi_l2", line_id="l2", bus_id="b2"),),
    )


def two_feeders_with_tie() -> Feeder:
    buses = tuple(bus(b) for b in ("a1", "a2", "a3", "c1", "c2", "c3"))
    return Feeder(
        id="two-feeders",
        name="Two feeders and a tie",
        sources=(Source(id="s1", bus_id="a1"), Source(id="s2", bus_id="c1")),
        buses=buses,
        lines=(
            line("la1", "a1", "a2"),
            line("la2", "a2", "a3"),
            line("lt", "a3", "c3"),
            line("lc2", "c3", "c2"),
            line("lc1", "c2", "c1"),
        ),
        switches=(
            switch("brk_a", "a1", "la1", kind=SwitchKind.BREAKER),
            switch("brk_c", "c1", "lc1", kind=SwitchKind.BREAKER),
            switch("tie", "a3", "lt", kind=SwitchKind.LOAD_BREAK_SWITCH, is_open=True),
        ),
        loads=(load("lda2", "a2"), load("lda3", "a3"), load("ldc2", "c2"), load("ldc3", "c3")),
    )


def ring_with_tie() -> Feeder:
    return Feeder(
        id="ring",
        name="One source, a ring held open by a tie",
        sources=(Source(id="src", bus_id="r0"),),
        buses=tuple(bus(f"r{i}") for i in range(5)),
        lines=(
            line("lr1", "r0", "r1"),
            line("lr2", "r1", "r2"),
            line("lr3", "r0", "r3"),
            line("lr4", "r3", "r4"),
            line("lrt", "r2", "r4"),
        ),
        switches=(switch("tie", "r2", "lrt", kind=SwitchKind.LOAD_BREAK_SWITCH, is_open=True),),
        loads=(load("ld1", "r1"), load("ld2", "r2"), load("ld3", "r3"), load("ld4", "r4")),
    )


def with_island() -> Feeder:
    f = radial()
    return replace(
        f, id="island", buses=(*f.buses, bus("x1"), bus("x2")), lines=(*f.lines, line("lx", "x1", "x2"))
    )


def with_substation_transformer() -> Feeder:
    """A 69/12.47 kV substation transformer with an OLTC feeding ``radial()``'s b1."""
    f = radial()
    trafo = Transformer(
        id="tr1",
        hv_bus_id="hv",
        lv_bus_id="b1",
        sn_mva=10.0,
        vn_hv_kv=69.0,
        vn_lv_kv=VN_KV,
        vk_percent=8.0,
        vkr_percent=0.5,
        tap_side="hv",
        tap_neutral=0,
        tap_min=-8,
        tap_max=8,
        tap_step_percent=1.25,
        tap_pos=0,
    )
    return replace(
        f,
        id="with-trafo",
        sources=(Source(id="src1", bus_id="hv"),),
        buses=(bus("hv", 69.0), *f.buses),
        transformers=(trafo,),
    )
