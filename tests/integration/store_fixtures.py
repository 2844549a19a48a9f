"""Graph store fixtures and feeder builders for integration tests.

Import into ``tests/integration/conftest.py`` with ``from tests.integration.store_fixtures import *``.

- ``arcadedb`` (session): one embedded ArcadeDB server for the whole run, in a temporary directory;
  stopped at the end (its java process is killed even when tests fail).
- ``store`` (session): a :class:`GraphStore` connected to it with the schema in place. Tests share
  it: each test uses feeder ids of its own (``unique_id``) or cleans up what it writes.
- ``small_feeder``/``radial_feeder`` build valid feeders: every element type and optional field
  set/unset, or an N-bus radial feeder of pandapower ``lv_schutterwald`` size for timings.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import pytest

from graph_schema.arcadedb import EmbeddedArcadeDB
from graph_schema.model import (
    Bus,
    Capacitor,
    Der,
    DerKind,
    ElementType,
    FaultIndicator,
    Feeder,
    Limits,
    Line,
    Load,
    MeasurementPoint,
    Quantity,
    Source,
    Switch,
    SwitchKind,
    Transformer,
)
from graph_schema.store import GraphStore

__all__ = ["arcadedb", "radial_feeder", "small_feeder", "store", "unique_id"]

_counter = itertools.count(1)


def unique_id(prefix: str = "f") -> str:
    """A feeder id no other test (nor an earlier run on the same store) uses."""
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
async def arcadedb(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedArcadeDB]:
    db = EmbeddedArcadeDB(tmp_path_factory.mktemp("arcadedb"), heap_mb=512)
    try:
        await db.start()
        yield db
    finally:
        await db.stop()


@pytest.fixture(scope="session")
async def store(arcadedb: EmbeddedArcadeDB) -> AsyncIterator[GraphStore]:
    gs = await GraphStore.connect(arcadedb.uri, arcadedb.user, arcadedb.password, arcadedb.database)
    try:
        await gs.ensure_schema()
        yield gs
    finally:
        await gs.close()


def small_feeder(feeder_id: str, *, name: str = "Small test feeder", all_optional: bool = True) -> Feeder:
    """Every element type; with ``all_optional`` every optional field set, otherwise all left unset.

    Both variants are valid: HV bus -> transformer (tap changer) -> MV bus -> lines -> a tie switch.
    """
    o = all_optional

    def opt(value: object) -> object:
        return value if o else None

    return Feeder(
        id=feeder_id,
        name=name,
        sources=(
            Source(
                id="src",
                bus_id="hv",
                name="Substation" if o else "",
                vm_pu=1.02,
                va_degree=0.5,
                s_sc_max_mva=opt(250.0),  # type: ignore[arg-type]
                rx_max=opt(0.1),  # type: ignore[arg-type]
            ),
        ),
        buses=(
            Bus(id="hv", vn_kv=110.0, name="HV", lon=opt(8.1), lat=opt(48.2)),  # type: ignore[arg-type]
            Bus(id="b1", vn_kv=20.0, lon=opt(8.11), lat=opt(48.21)),  # type: ignore[arg-type]
            Bus(id="b2", vn_kv=20.0, name="Bus 2 'quoted' \u00e9"),
            Bus(id="b3", vn_kv=20.0, in_service=False),
        ),
        lines=(
            Line(
                id="l1",
                from_bus_id="b1",
                to_bus_id="b2",
                length_km=1.5,
                r_ohm_per_km=0.2,
                x_ohm_per_km=0.1,
                c_nf_per_km=10.0,
                max_i_ka=0.3,
                name="L1",
                r0_ohm_per_km=opt(0.6),  # type: ignore[arg-type]
                x0_ohm_per_km=opt(0.3),  # type: ignore[arg-type]
                c0_nf_per_km=opt(4.0),  # type: ignore[arg-type]
                parallel=2,
            ),
            Line(
                id="l2",
                from_bus_id="b2",
                to_bus_id="b3",
                length_km=0.4,
                r_ohm_per_km=0.3,
                x_ohm_per_km=0.12,
                c_nf_per_km=0.0,
                max_i_ka=0.2,
                in_service=False,
            ),
            Line(
                id="l3",
                from_bus_id="b1",
                to_bus_id="b3",
                length_km=2.0,
                r_ohm_per_km=0.3,
                x_ohm_per_km=0.12,
                c_nf_per_km=1.0,
                max_i_ka=0.2,
            ),
        ),
        transformers=(
            Transformer(
                id="t1",
                hv_bus_id="hv",
                lv_bus_id="b1",
                sn_mva=25.0,
                vn_hv_kv=110.0,
                vn_lv_kv=20.0,
                vk_percent=12.0,
                vkr_percent=0.4,
                name="T1",
                pfe_kw=14.0,
                i0_percent=0.07,
                shift_degree=150.0,
                tap_side=opt("hv"),  # type: ignore[arg-type]
                tap_neutral=opt(0),  # type: ignore[arg-type]
                tap_min=opt(-9),  # type: ignore[arg-type]
                tap_max=opt(9),  # type: ignore[arg-type]
                tap_step_percent=opt(1.5),  # type: ignore[arg-type]
                tap_pos=opt(-2),  # type: ignore[arg-type]
                vector_group=opt("Dyn5"),  # type: ignore[arg-type]
            ),
        ),
        switches=(
            Switch(id="cb1", kind=SwitchKind.BREAKER, bus_id="b1", element_type=ElementType.LINE, element_id="l1"),
            Switch(
                id="tie",
                kind=SwitchKind.LOAD_BREAK_SWITCH,
                bus_id="b3",
                element_type=ElementType.LINE,
                element_id="l3",
                is_open=True,
                normally_open=True,
                name="Tie",
            ),
            Switch(
                id="ds1",
                kind=SwitchKind.DISCONNECTOR,
                bus_id="hv",
                element_type=ElementType.TRANSFORMER,
                element_id="t1",
            ),
            Switch(id="fu1", kind=SwitchKind.FUSE, bus_id="b2", element_type=ElementType.BUS, element_id="b3"),
        ),
        loads=(
            Load(id="ld1", bus_id="b2", p_mw=1.2, q_mvar=0.3, customers=120, name="Load 1"),
            Load(id="ld2", bus_id="b3", p_mw=0.0, q_mvar=-0.1, customers=0, in_service=False),
        ),
        ders=(
            Der(
                id="pv1",
                bus_id="b2",
                kind=DerKind.STORAGE,
                sn_mva=0.5,
                p_mw=0.25,
                q_mvar=0.05,
                name="Battery",
                max_e_mwh=opt(1.0),  # type: ignore[arg-type]
            ),
        ),
        capacitors=(Capacitor(id="c1", bus_id="b2", q_mvar=0.6, steps=3, step=2),),
        measurement_points=(
            MeasurementPoint(id="m1", element_id="b2", quantity=Quantity.VM_PU, name="V b2"),
            MeasurementPoint(id="m2", element_id="l1", quantity=Quantity.I_KA),
            MeasurementPoint(id="m3", element_id="cb1", quantity=Quantity.STATUS),
        ),
        fault_indicators=(FaultIndicator(id="fi1", line_id="l1", bus_id="b1", name="FI 1"),),
        limits=(
            Limits(vm_min_pu=0.93, vm_max_pu=1.07, emergency_vm_min_pu=0.9, emergency_vm_max_pu=1.1) if o else Limits()
        ),
        sn_mva=10.0 if o else 1.0,
        f_hz=60.0 if o else 50.0,
    )


def radial_feeder(feeder_id: str, n_buses: int = 3000) -> Feeder:
    """A synthetic radial LV feeder of ``n_buses`` buses (branching every 20 buses), with a load
    on every bus, a switch on every tenth line and a measurement point on every line."""
    buses = [Bus(id="b0", vn_kv=20.0, name="MV")] + [
        Bus(id=f"b{i}", vn_kv=0.4, lon=8.0 + i * 1e-5, lat=48.0) for i in range(1, n_buses)
    ]
    lines = []
    for i in range(2, n_buses):
        parent = i - 1 if i % 20 else max(1, i - 19)
        lines.append(
            Line(
                id=f"l{i}",
                from_bus_id=f"b{parent}",
                to_bus_id=f"b{i}",
                length_km=0.03,
                r_ohm_per_km=0.2,
                x_ohm_per_km=0.08,
                c_nf_per_km=200.0,
                max_i_ka=0.27,
            )
        )
    switches = [
        Switch(
            id=f"s{ln.id}",
            kind=SwitchKind.FUSE,
            bus_id=ln.from_bus_id,
            element_type=ElementType.LINE,
            element_id=ln.id,
        )
        for ln in lines[::10]
    ]
    return Feeder(
        id=feeder_id,
        name=f"Radial {n_buses}",
        sources=(Source(id="src", bus_id="b0"),),
        buses=tuple(buses),
        lines=tuple(lines),
        transformers=(
            Transformer(
                id="t0",
                hv_bus_id="b0",
                lv_bus_id="b1",
                sn_mva=0.63,
                vn_hv_kv=20.0,
                vn_lv_kv=0.4,
                vk_percent=6.0,
                vkr_percent=1.0,
            ),
        ),
        switches=tuple(switches),
        loads=tuple(
            Load(id=f"ld{i}", bus_id=f"b{i}", p_mw=0.002, q_mvar=0.0005, customers=1) for i in range(2, n_buses)
        ),
        measurement_points=tuple(
            MeasurementPoint(id=f"m{ln.id}", element_id=ln.id, quantity=Quantity.I_KA) for ln in lines
        ),
    )
