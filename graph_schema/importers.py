"""Importers: pandapower networks -> validated :class:`~graph_schema.model.Feeder`.

Id convention (stable, readable, derived from the pandapower index so a result can be traced back
to its row): ``bus{i}``, ``line{i}``, ``tr{i}``, ``sw{i}``, ``load{i}``, ``der{i}`` (sgen),
``storage{i}``, ``cap{i}`` (shunt), ``src{i}`` (ext_grid), where ``i`` is the pandapower index
plus ``index_base``. The published feeders that number their buses from 1 (Baran & Wu) are
imported with ``index_base=1`` so that ``bus18`` is the published bus 18; everything else uses the
raw index (``index_base=0``). Switches added by the importer continue the switch numbering after
the net's own switches, in line order (on case33bw: ``sw{k}`` sits on ``line{k}``).

Mapping rules:

* ``ext_grid`` -> :class:`Source`; ``sgen`` -> :class:`Der` (type ``PV``/``WP``/``CHP``/fuel cell,
  else ``OTHER``); ``storage`` -> :class:`Der` of kind STORAGE with ``p_mw`` negated (pandapower's
  storage uses the load sign convention, the model's ``Der.p_mw`` > 0 is injection); ``shunt`` with
  ``q_mvar`` < 0 (pandapower: positive is consumption) -> :class:`Capacitor` with ``q_mvar`` =
  ``-q_mvar`` per step. Reactors (``q_mvar`` >= 0), lossy shunts, ``gen``, ``trafo3w``, ``impedance``,
  ``ward``, ``xward`` and ``dcline`` elements in service are refused with ``BadInput``.
* Loads and sgens keep ``p_mw``/``q_mvar`` times their ``scaling`` (identity for scaling 1, as in
  every network shipped here). Loads are modelled as constant power (ZIP shares are dropped).
* Customer counts: a ``customers`` column on ``net.load`` is used when present; otherwise
  ``max(1, round(p_mw * default_customers_per_mw))``, with 1000/3 customers per MW by default
  (an average residential demand of 3 kW per customer).
* Switch types: ``CB`` -> BREAKER, ``LBS`` and ``LS`` (load switch) -> LOAD_BREAK_SWITCH, ``DS`` ->
  DISCONNECTOR, none/unknown -> SECTIONALIZER; ``switch_kind_map`` overrides entries (key ``None``
  is the default). The net's switch positions are taken as the normal state:
  ``normally_open = is_open = not closed``.
* ``tie_lines``: these lines are tie branches; an out-of-service tie becomes an in-service line with
  an open, normally-open LOAD_BREAK_SWITCH (an existing switch on it is opened instead of adding one).
* ``add_line_switches``: a SECTIONALIZER at the from-bus of every line that has no switch.
* ``feeder_breakers``: every non-tie line leaving a *head bus* (a source bus or a transformer's lv
  bus) gets a BREAKER at that bus; a switch the importer added there becomes that breaker, an
  existing pandapower switch there is kept as it is.
* Geo: pandapower 3 keeps bus coordinates in ``net.bus.geo`` as GeoJSON points; they become
  ``lon``/``lat`` (WGS84). The published test feeders (Baran & Wu, CIGRE MV) carry schematic x/y
  instead; their importers place them on the map explicitly (:func:`place_schematic`), so nothing
  downstream (the public outage map) takes drawing units for degrees.
* Transformers with ``parallel`` = n become one of n x ``sn_mva`` (same percent impedances).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from graph_schema.errors import BadInput
from graph_schema.model import (
    Bus,
    Capacitor,
    Der,
    DerKind,
    ElementType,
    Feeder,
    Limits,
    Line,
    Load,
    Source,
    Switch,
    SwitchKind,
    Transformer,
)
from graph_schema.quiet import quiet_warnings
from graph_schema.validate import ensure_valid

DEFAULT_CUSTOMERS_PER_MW = 1000.0 / 3.0  # 3 kW average residential demand per customer

DEFAULT_SWITCH_KINDS: dict[str | None, SwitchKind] = {
    "CB": SwitchKind.BREAKER,
    "LBS": SwitchKind.LOAD_BREAK_SWITCH,
    "LS": SwitchKind.LOAD_BREAK_SWITCH,
    "DS": SwitchKind.DISCONNECTOR,
    None: SwitchKind.SECTIONALIZER,
}

_SGEN_KINDS = {
    "PV": DerKind.PV,
    "WP": DerKind.WIND,
    "WIND": DerKind.WIND,
    "CHP": DerKind.CHP,
    "FC": DerKind.FUEL_CELL,
    "FUEL CELL": DerKind.FUEL_CELL,
    "FUEL_CELL": DerKind.FUEL_CELL,
}

_UNSUPPORTED = ("gen", "trafo3w", "impedance", "ward", "xward", "dcline")

# Limits of the demo and bench feeders: each accepts its own published base case (see README).
CASE33BW_LIMITS = Limits(vm_min_pu=0.90, vm_max_pu=1.05, emergency_vm_min_pu=0.88, emergency_vm_max_pu=1.058)
CIGRE_MV_LIMITS = Limits(vm_min_pu=0.94, vm_max_pu=1.05, emergency_vm_min_pu=0.917, emergency_vm_max_pu=1.058)
SCHUTTERWALD_LIMITS = Limits(
    vm_min_pu=0.88,
    vm_max_pu=1.05,
    emergency_vm_min_pu=0.85,
    emergency_vm_max_pu=1.10,
    max_loading_percent=110.0,
    emergency_max_loading_percent=130.0,
)


def _num(value: Any) -> float | None:
    """A finite float, or None for NaN/None/pd.NA."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(value: Any) -> int | None:
    f = _num(value)
    return None if f is None else round(f)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    s = str(value)
    return "" if s in ("nan", "None", "<NA>") else s


def _geo(value: Any) -> tuple[float | None, float | None]:
    if not isinstance(value, str) or not value:
        return None, None
    try:
        geo = json.loads(value)
        x, y = geo["coordinates"][:2]
        return _num(x), _num(y)
    except (ValueError, KeyError, TypeError, IndexError):
        return None, None


def _quietly(build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a pandapower loader with its own warnings silenced.

    pandapower's network loaders run a power flow on data older than its current format (numba
    absent, ``tap_dependency_table`` missing): warnings about pandapower's own files that a user
    cannot act on, and errors under the test suite's warnings-as-errors.
    """
    with quiet_warnings():
        return build(*args, **kwargs)


def _table(net: Any, name: str) -> Any:
    return net[name] if name in net and len(net[name]) else None


def from_pandapower(
    net: Any,
    feeder_id: str,
    name: str,
    *,
    limits: Limits | None = None,
    add_line_switches: bool = False,
    tie_lines: Iterable[int] = (),
    feeder_breakers: bool = False,
    default_customers_per_mw: float = DEFAULT_CUSTOMERS_PER_MW,
    switch_kind_map: Mapping[str | None, SwitchKind] | None = None,
    index_base: int = 0,
) -> Feeder:
    """A validated :class:`Feeder` from a pandapower net (the net is not modified).

    Raises ``BadInput`` for elements the model cannot represent and ``InvalidModel`` when the
    result fails validation.
    """
    for table in _UNSUPPORTED:
        df = _table(net, table)
        if df is not None and bool(df["in_service"].any()):
            raise BadInput(
                f"the pandapower net has in-service {table!r} elements, which the feeder model cannot "
                f"represent; convert them (e.g. gen -> sgen) or set them out of service before importing"
            )
    kinds = {**DEFAULT_SWITCH_KINDS, **(switch_kind_map or {})}
    base = index_base

    def bid(i: Any) -> str:
        return f"bus{int(i) + base}"

    buses = []
    geo_col = net.bus["geo"] if "geo" in net.bus.columns else None
    for i, row in net.bus.iterrows():
        lon, lat = _geo(geo_col[i]) if geo_col is not None else (None, None)
        buses.append(
            Bus(
                id=bid(i),
                vn_kv=float(row.vn_kv),
                name=_text(row.get("name")),
                lon=lon,
                lat=lat,
                in_service=bool(row.in_service),
            )
        )

    sources = []
    for i, row in net.ext_grid.iterrows():
        if not bool(row.in_service):
            continue
        sources.append(
            Source(
                id=f"src{i + base}",
                bus_id=bid(row.bus),
                name=_text(row.get("name")),
                vm_pu=float(row.vm_pu),
                va_degree=float(row.get("va_degree", 0.0)),
                s_sc_max_mva=_num(row.get("s_sc_max_mva")),
                rx_max=_num(row.get("rx_max")),
            )
        )

    ties = set(tie_lines)
    unknown_ties = ties - set(net.line.index)
    if unknown_ties:
        raise BadInput(
            f"tie_lines {sorted(unknown_ties)} are not line indices of the net; "
            f"pass indices from net.line.index"
        )
    lines = []
    for i, row in net.line.iterrows():
        lines.append(
            Line(
                id=f"line{i + base}",
                from_bus_id=bid(row.from_bus),
                to_bus_id=bid(row.to_bus),
                length_km=float(row.length_km),
                r_ohm_per_km=float(row.r_ohm_per_km),
                x_ohm_per_km=float(row.x_ohm_per_km),
                c_nf_per_km=float(row.c_nf_per_km),
                max_i_ka=float(row.max_i_ka),
                name=_text(row.get("name")),
                r0_ohm_per_km=_num(row.get("r0_ohm_per_km")),
                x0_ohm_per_km=_num(row.get("x0_ohm_per_km")),
                c0_nf_per_km=_num(row.get("c0_nf_per_km")),
                parallel=int(row.get("parallel", 1)),
                in_service=bool(row.in_service) or i in ties,
            )
        )

    trafos = []
    for i, row in net.trafo.iterrows():
        par = int(row.get("parallel", 1) or 1)
        tap_side = _text(row.get("tap_side")) or None
        trafos.append(
            Transformer(
                id=f"tr{i + base}",
                hv_bus_id=bid(row.hv_bus),
                lv_bus_id=bid(row.lv_bus),
                sn_mva=float(row.sn_mva) * par,
                vn_hv_kv=float(row.vn_hv_kv),
                vn_lv_kv=float(row.vn_lv_kv),
                vk_percent=float(row.vk_percent),
                vkr_percent=float(row.vkr_percent),
                name=_text(row.get("name")),
                pfe_kw=float(row.pfe_kw) * par,
                i0_percent=float(row.i0_percent),
                shift_degree=float(row.get("shift_degree", 0.0)),
                tap_side=tap_side,
                tap_neutral=_int(row.get("tap_neutral")),
                tap_min=_int(row.get("tap_min")),
                tap_max=_int(row.get("tap_max")),
                tap_step_percent=_num(row.get("tap_step_percent")),
                tap_pos=_int(row.get("tap_pos")),
                vector_group=_text(row.get("vector_group")) or None,
                in_service=bool(row.in_service),
            )
        )

    # Switches: the net's own, then those the importer adds.
    switches: list[Switch] = []
    switched_line_ends: set[tuple[int, int]] = set()  # (line index, bus index)
    switched_lines: set[int] = set()
    for i, row in net.switch.iterrows():
        et = row.et
        sw_type = _text(row.get("type")) or None
        kind = kinds.get(sw_type, kinds[None])
        is_open = not bool(row.closed)
        if et == "l":
            etype, eid = ElementType.LINE, f"line{int(row.element) + base}"
            switched_lines.add(int(row.element))
            switched_line_ends.add((int(row.element), int(row.bus)))
            if int(row.element) in ties:
                is_open = True
        elif et == "t":
            etype, eid = ElementType.TRANSFORMER, f"tr{int(row.element) + base}"
        elif et == "b":
            etype, eid = ElementType.BUS, bid(row.element)
        else:
            raise BadInput(
                f"switch {i} has element type {et!r}; only 'l', 't' and 'b' switches are supported "
                f"(remove or convert it)"
            )
        switches.append(
            Switch(
                id=f"sw{i + base}",
                kind=kind,
                bus_id=bid(row.bus),
                element_type=etype,
                element_id=eid,
                is_open=is_open,
                normally_open=is_open,
                name=_text(row.get("name")),
            )
        )
    next_sw = (int(net.switch.index.max()) + 1 if len(net.switch) else 0) + base

    head_buses = {int(b) for b in net.ext_grid.bus[net.ext_grid.in_service]}
    head_buses |= {int(b) for b in net.trafo.lv_bus[net.trafo.in_service]}
    tie_kind = kinds.get("LBS", SwitchKind.LOAD_BREAK_SWITCH)
    for i, row in net.line.iterrows():
        fb, tb = int(row.from_bus), int(row.to_bus)
        is_tie = i in ties
        if i not in switched_lines and (add_line_switches or is_tie):
            at = fb
            kind = kinds[None]
            if is_tie:
                kind = tie_kind
            elif feeder_breakers and (fb in head_buses or tb in head_buses):
                at = fb if fb in head_buses else tb
                kind = SwitchKind.BREAKER
            switches.append(
                Switch(
                    id=f"sw{next_sw}",
                    kind=kind,
                    bus_id=bid(at),
                    element_type=ElementType.LINE,
                    element_id=f"line{i + base}",
                    is_open=is_tie,
                    normally_open=is_tie,
                )
            )
            next_sw += 1
            switched_line_ends.add((i, at))
            continue
        if feeder_breakers and not is_tie and bool(row.in_service):
            for at in (fb, tb):
                if at in head_buses and (i, at) not in switched_line_ends:
                    switches.append(
                        Switch(
                            id=f"sw{next_sw}",
                            kind=SwitchKind.BREAKER,
                            bus_id=bid(at),
                            element_type=ElementType.LINE,
                            element_id=f"line{i + base}",
                        )
                    )
                    next_sw += 1
                    switched_line_ends.add((i, at))

    loads = []
    has_customers = "customers" in net.load.columns
    for i, row in net.load.iterrows():
        scaling = float(row.get("scaling", 1.0))
        p, q = float(row.p_mw) * scaling, float(row.q_mvar) * scaling
        customers = _int(row["customers"]) if has_customers else None
        if customers is None:
            customers = max(1, round(p * default_customers_per_mw))
        loads.append(
            Load(
                id=f"load{i + base}",
                bus_id=bid(row.bus),
                p_mw=p,
                q_mvar=q,
                customers=customers,
                name=_text(row.get("name")),
                in_service=bool(row.in_service),
            )
        )

    ders = []
    sgen = _table(net, "sgen")
    if sgen is not None:
        for i, row in sgen.iterrows():
            scaling = float(row.get("scaling", 1.0))
            p, q = float(row.p_mw) * scaling, float(row.q_mvar) * scaling
            sn = _num(row.get("sn_mva")) or max(abs(complex(p, q)), 1e-6)
            ders.append(
                Der(
                    id=f"der{i + base}",
                    bus_id=bid(row.bus),
                    kind=_SGEN_KINDS.get(_text(row.get("type")).upper(), DerKind.OTHER),
                    sn_mva=sn,
                    p_mw=p,
                    q_mvar=q,
                    name=_text(row.get("name")),
                    in_service=bool(row.in_service),
                )
            )
    storage = _table(net, "storage")
    if storage is not None:
        for i, row in storage.iterrows():
            scaling = float(row.get("scaling", 1.0))
            p, q = -float(row.p_mw) * scaling, -float(row.q_mvar) * scaling
            sn = _num(row.get("sn_mva")) or max(abs(complex(p, q)), 1e-6)
            ders.append(
                Der(
                    id=f"storage{i + base}",
                    bus_id=bid(row.bus),
                    kind=DerKind.STORAGE,
                    sn_mva=sn,
                    p_mw=p,
                    q_mvar=q,
                    name=_text(row.get("name")),
                    max_e_mwh=_num(row.get("max_e_mwh")),
                    in_service=bool(row.in_service),
                )
            )

    caps = []
    shunt = _table(net, "shunt")
    if shunt is not None:
        for i, row in shunt.iterrows():
            q, p = float(row.q_mvar), float(row.get("p_mw", 0.0) or 0.0)
            if q >= 0 or p != 0:
                raise BadInput(
                    f"shunt {i} has q_mvar={q}, p_mw={p}: only capacitor banks (q_mvar < 0 in "
                    f"pandapower's load convention, p_mw = 0) can be imported; remove it or model "
                    f"it as a load",
                    element_id=f"cap{i + base}",
                )
            steps = int(_num(row.get("max_step")) or 1)
            step = int(_num(row.get("step")) or 0)
            caps.append(
                Capacitor(
                    id=f"cap{i + base}",
                    bus_id=bid(row.bus),
                    q_mvar=-q,
                    name=_text(row.get("name")),
                    steps=steps,
                    step=step,
                    in_service=bool(row.in_service),
                )
            )

    feeder = Feeder(
        id=feeder_id,
        name=name,
        sources=tuple(sources),
        buses=tuple(buses),
        lines=tuple(lines),
        transformers=tuple(trafos),
        switches=tuple(switches),
        loads=tuple(loads),
        ders=tuple(ders),
        capacitors=tuple(caps),
        limits=limits or Limits(),
        sn_mva=float(net.sn_mva),
        f_hz=float(net.f_hz),
    )
    return ensure_valid(feeder)


# Where the demo's schematic feeders are drawn on the map: a fictitious service area near
# Schutterwald (Baden), 48.46 N 7.87 E, where pandapower's real LV grid lies too.
DEMO_ORIGIN_LON_LAT = (7.87, 48.46)


def place_schematic(feeder: Feeder, *, origin_lon_lat: tuple[float, float], metres_per_unit: float,
                    offset_m: tuple[float, float] = (0.0, 0.0)) -> Feeder:
    """A copy of ``feeder`` whose schematic bus x/y (held in lon/lat by the importer) become WGS84:
    ``metres_per_unit`` metres per drawing unit, east and north of ``origin_lon_lat`` (+ ``offset_m``)."""
    lon0, lat0 = origin_lon_lat
    m_per_deg_lat = 110_540.0
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(lat0))
    buses = []
    for b in feeder.buses:
        if b.lon is None or b.lat is None:
            buses.append(b)
            continue
        east = b.lon * metres_per_unit + offset_m[0]
        north = b.lat * metres_per_unit + offset_m[1]
        buses.append(replace(b, lon=round(lon0 + east / m_per_deg_lon, 7), lat=round(lat0 + north / m_per_deg_lat, 7)))
    return replace(feeder, buses=tuple(buses))


def case33bw() -> Feeder:
    """Baran & Wu 33-bus 12.66 kV feeder: a switch on each of its 37 branches, 5 normally-open ties.

    ``sw1`` (at ``bus1`` on ``line1``) is the feeder BREAKER, ``sw2``..``sw32`` SECTIONALIZERs and
    ``sw33``..``sw37`` the open LOAD_BREAK_SWITCH ties. Base case: losses 202.7 kW, minimum
    0.9131 pu at ``bus18``; limits accept it (normal 0.90-1.05 pu, emergency 0.88-1.058 pu).
    """
    import pandapower.networks as pn

    net = _quietly(pn.case33bw)
    # pandapower names the buses by their 0-based index; the published numbering starts at 1.
    net.bus["name"] = [f"Bus {i + 1}" for i in net.bus.index]
    feeder = from_pandapower(
        net,
        "case33bw",
        "Baran & Wu 33-bus",
        limits=CASE33BW_LIMITS,
        add_line_switches=True,
        tie_lines=range(32, 37),
        feeder_breakers=True,
        index_base=1,
    )
    # Schematic drawing units of about +-5: 300 m each gives a ~3 km service area.
    return place_schematic(feeder, origin_lon_lat=DEMO_ORIGIN_LON_LAT, metres_per_unit=300.0)


# Volt/VAR demo: ANSI C84.1 Range A/B, which Baran & Wu's base case (0.913 pu) only meets under control.
CASE33BW_VVO_LIMITS = Limits(vm_min_pu=0.95, vm_max_pu=1.05, emergency_vm_min_pu=0.917, emergency_vm_max_pu=1.058)


def case33bw_vvo() -> Feeder:
    """Baran & Wu 33-bus made a Volt/VAR demo feeder (``case33bw`` itself stays as published).

    Added to it: a 66/12.66 kV substation transformer ``oltc`` with an on-load tap changer (hv side,
    -8..+8 x 1.25 %, band 1.00 pu +- 0.0125) feeding ``bus1`` from the new source bus ``bus0``; a line
    voltage regulator ``reg1`` (1:1, lv side, -16..+16 x 0.625 %, band 1.00 pu +- 0.01, LDC) between
    ``bus6`` and the new bus ``bus6r`` that now feeds ``line6`` (its sectionalizer ``sw6`` moves to
    ``bus6r``); three switched capacitor banks with local voltage control (``cap12``: 3 x 150 kvar at
    ``bus12``, ``cap25``: 2 x 200 kvar at ``bus25``, ``cap30``: 4 x 150 kvar at ``bus30``, all out);
    and four PV plants (``pv18``, ``pv22``, ``pv25``, ``pv33``, 6.5 MW in all at the feeder ends,
    rated 10 % above their output, at unity power factor). The source holds 1.02 pu on the 66 kV side.
    The model's loads and PV output are a sunny midday at nominal load: without control ``bus18``
    rises to 1.065 pu (see the tests); with the PV at zero (evening) it falls to 0.910 pu. Limits: ANSI C84.1 Range A
    (0.95-1.05 pu) and Range B (0.917-1.058 pu).
    """
    base = case33bw()
    src = base.sources[0]
    b1 = base.bus("bus1")
    hv = Bus("bus0", 66.0, name="Substation 66 kV", lon=b1.lon, lat=b1.lat)
    reg_bus = replace(base.bus("bus6"), id="bus6r", name="Bus 6 (regulated)")
    oltc = Transformer("oltc", "bus0", "bus1", sn_mva=10.0, vn_hv_kv=66.0, vn_lv_kv=12.66, vk_percent=8.0,
                       vkr_percent=0.5, name="Substation OLTC", tap_side="hv", tap_neutral=0, tap_min=-8,
                       tap_max=8, tap_step_percent=1.25, tap_pos=0, band_centre_pu=1.0, bandwidth_pu=0.025)
    reg = Transformer("reg1", "bus6", "bus6r", sn_mva=5.0, vn_hv_kv=12.66, vn_lv_kv=12.66, vk_percent=0.5,
                      vkr_percent=0.05, name="Line regulator 1", tap_side="lv", tap_neutral=0, tap_min=-16,
                      tap_max=16, tap_step_percent=0.625, tap_pos=0, regulator=True, band_centre_pu=1.0,
                      bandwidth_pu=0.02, ldc_r_ohm=1.0, ldc_x_ohm=0.5)
    lines = tuple(replace(ln, from_bus_id="bus6r") if ln.id == "line6" else ln for ln in base.lines)
    switches = tuple(replace(s, bus_id="bus6r") if s.id == "sw6" else s for s in base.switches)
    caps = (
        Capacitor("cap12", "bus12", 0.15, name="Capacitor bank 12", steps=3, step=0, local_control=True,
                  v_on_pu=0.96, v_off_pu=1.04),
        Capacitor("cap25", "bus25", 0.2, name="Capacitor bank 25", steps=2, step=0, local_control=True,
                  v_on_pu=0.96, v_off_pu=1.04),
        Capacitor("cap30", "bus30", 0.15, name="Capacitor bank 30", steps=4, step=0, local_control=True,
                  v_on_pu=0.96, v_off_pu=1.04),
    )
    pv = tuple(
        Der(f"pv{b}", f"bus{b}", DerKind.PV, sn_mva=round(1.1 * p, 4), p_mw=p, name=f"PV plant {b}")
        for b, p in ((18, 1.8), (22, 1.35), (25, 1.35), (33, 2.0))
    )
    feeder = replace(
        base, id="case33bw-vvo", name="Baran & Wu 33-bus, Volt/VAR demo",
        sources=(replace(src, bus_id="bus0", vm_pu=1.02),), buses=(hv, *base.buses, reg_bus), lines=lines,
        transformers=(oltc, reg, *base.transformers), switches=switches, capacitors=caps, ders=pv,
        limits=CASE33BW_VVO_LIMITS,
    )
    ensure_valid(feeder)
    return feeder


def cigre_mv(with_der: str = "pv_wind") -> Feeder:
    """CIGRE MV benchmark (20 kV, two feeders from 110 kV) with its switches; S1, S2, S3 are open ties.

    The transformer CBs sit on the 110 kV side; a BREAKER is added at each feeder head
    (``line0`` at ``bus1``, ``line10`` at ``bus12``). Limits: normal 0.94-1.05 pu (the base case
    with full DER output reaches 0.947 pu), emergency 0.917-1.058 pu.
    """
    import pandapower.networks as pn

    net = _quietly(pn.create_cigre_network_mv, with_der=with_der)
    feeder = from_pandapower(
        net, "cigre-mv", "CIGRE MV benchmark", limits=CIGRE_MV_LIMITS, feeder_breakers=True
    )
    # Schematic units of 0-20: 250 m each, placed 6 km east of the case33bw area.
    return place_schematic(feeder, origin_lon_lat=DEMO_ORIGIN_LON_LAT, metres_per_unit=250.0,
                           offset_m=(6_000.0, 0.0))


def lv_schutterwald() -> Feeder:
    """Schutterwald LV grid (2,940 buses, 14 substations, 88 open switches) for benchmarks."""
    import pandapower.networks as pn

    net = _quietly(pn.lv_schutterwald)
    return from_pandapower(net, "schutterwald", "Schutterwald LV grid", limits=SCHUTTERWALD_LIMITS)


def from_pandapower_json(path: str | Path, feeder_id: str | None = None, name: str | None = None) -> Feeder:
    """Import a network saved with ``pandapower.to_json``; id and name default to the file's stem."""
    import pandapower as pp

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: no such file; give the path of a pandapower JSON file (pandapower.to_json)")
    try:
        net = _quietly(pp.from_json, str(p))
    except Exception as exc:  # pandapower raises many kinds on bad input
        raise BadInput(
            f"{p}: cannot be read as a pandapower network ({type(exc).__name__}: {exc}); "
            f"export the network with pandapower.to_json(net, path) and try again"
        ) from exc
    if not isinstance(net, pp.pandapowerNet) or "bus" not in net or "line" not in net:
        raise BadInput(f"{p}: is JSON but not a pandapower network; export one with pandapower.to_json")
    fid = feeder_id or p.stem
    return from_pandapower(net, fid, name or _text(net.get("name")) or fid)


DEMO_FEEDERS: dict[str, Callable[[], Feeder]] = {"case33bw": case33bw, "cigre-mv": cigre_mv}
BENCH_FEEDERS: dict[str, Callable[[], Feeder]] = {**DEMO_FEEDERS, "schutterwald": lv_schutterwald}
# Built on request (the Volt/VAR tests and bench, or a caller that imports it), not in every
# demo and test fixture: a third feeder actor costs every server fixture its start-up.
VOLTVAR_FEEDERS: dict[str, Callable[[], Feeder]] = {"case33bw-vvo": case33bw_vvo}
