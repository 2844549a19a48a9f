"""Validation of a :class:`~graph_schema.model.Feeder` before it is stored or solved.

``validate_feeder`` returns every problem found (never stops at the first one); ``ensure_valid``
raises :class:`~graph_schema.errors.InvalidModel` listing all of them. Each
:class:`~graph_schema.errors.ModelProblem` names the element and says what is wrong and how to fix it.

Checks, in the order they are reported:

* ids: empty ids and ids used more than once anywhere in the feeder (all element kinds share one
  id space, so a measurement point can name any element unambiguously);
* numbers: NaN or infinity in any numeric field of any element, of the limits, of the feeder;
* feeder: base power and frequency positive; at least one source;
* limits: min < max in both bands, the emergency band contains the normal band, loadings positive
  and the emergency loading at least the normal one;
* references: every bus id of every element exists; a switch's element exists and has the kind its
  ``element_type`` says; a switch's bus is an end of its line or transformer; a fault indicator's
  line exists and its bus is an end of that line; a measurement point's element exists;
* values: ``vn_kv`` > 0, line length > 0, r/x/c >= 0 and not both r and x zero, ``max_i_ka`` > 0,
  ``parallel`` >= 1, a line joining buses whose ``vn_kv`` differ by more than 10 %, transformer
  ``sn_mva`` > 0, rated voltages > 0, ``vk_percent`` > 0, 0 <= ``vkr_percent`` <= ``vk_percent``,
  tap range ordered and ``tap_pos`` inside it, negative customer counts, capacitor steps;
* reachability: buses that no source can reach even with every switch closed and every line and
  transformer in service (an island with no possible supply). Out-of-service buses are exempt.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import fields, is_dataclass

from graph_schema.errors import InvalidModel, ModelProblem
from graph_schema.model import ElementType, Feeder, Limits

# A line may join buses whose nominal voltages differ by rounding (12.66 vs 12.7 kV), not by a
# transformation ratio: more than this relative difference is reported.
LINE_VN_TOLERANCE = 0.10

_Add = Callable[[str, str], None]  # records one problem: (element id, message)


def ensure_valid(feeder: Feeder) -> Feeder:
    """Return ``feeder`` unchanged when it is valid; otherwise raise ``InvalidModel`` with every problem."""
    problems = validate_feeder(feeder)
    if problems:
        raise InvalidModel(feeder.id, problems)
    return feeder


def validate_feeder(feeder: Feeder) -> list[ModelProblem]:
    """Every problem of ``feeder``, in a stable order; an empty list means the feeder is valid."""
    out: list[ModelProblem] = []

    def add(element_id: str, problem: str) -> None:
        out.append(ModelProblem(element_id, problem))

    _check_ids(feeder, add)
    _check_numbers(feeder, add)
    if feeder.sn_mva <= 0:
        add(feeder.id, f"feeder base power sn_mva={feeder.sn_mva} must be > 0; use 1.0 if unsure")
    if feeder.f_hz <= 0:
        add(feeder.id, f"feeder frequency f_hz={feeder.f_hz} must be > 0; use 50 or 60")
    if not feeder.sources:
        add(feeder.id, "feeder has no source; add a Source (substation bus / ext_grid) at the feeder head")
    _check_limits(feeder.id, feeder.limits, add)

    buses = {b.id: b for b in feeder.buses}
    lines = {ln.id: ln for ln in feeder.lines}
    trafos = {t.id: t for t in feeder.transformers}
    all_ids = {getattr(e, "id", "") for e in feeder.elements()}

    def bus_ref(element_id: str, field_name: str, bus_id: str) -> bool:
        if bus_id in buses:
            return True
        add(element_id, f"{field_name} {bus_id!r} is not a bus of this feeder; add the bus or correct the id")
        return False

    for s in feeder.sources:
        bus_ref(s.id, "bus_id", s.bus_id)
        if s.vm_pu <= 0:
            add(s.id, f"source vm_pu={s.vm_pu} must be > 0 (typically 1.0)")
        if s.s_sc_max_mva is not None and s.s_sc_max_mva <= 0:
            add(s.id, f"s_sc_max_mva={s.s_sc_max_mva} must be > 0 or left unset")
        if s.rx_max is not None and s.rx_max < 0:
            add(s.id, f"rx_max={s.rx_max} must be >= 0 or left unset")

    for b in feeder.buses:
        if b.vn_kv <= 0:
            add(b.id, f"vn_kv={b.vn_kv} must be > 0; set the bus's nominal voltage in kV")
        if (b.lon is None) != (b.lat is None):
            add(b.id, "only one of lon/lat is set; give both coordinates or neither")
        if b.lon is not None and not -180.0 <= b.lon <= 180.0:
            add(b.id, f"lon={b.lon} is outside [-180, 180]; coordinates are WGS84 degrees")
        if b.lat is not None and not -90.0 <= b.lat <= 90.0:
            add(b.id, f"lat={b.lat} is outside [-90, 90]; coordinates are WGS84 degrees")

    for ln in feeder.lines:
        ok_from = bus_ref(ln.id, "from_bus_id", ln.from_bus_id)
        ok_to = bus_ref(ln.id, "to_bus_id", ln.to_bus_id)
        if ln.from_bus_id == ln.to_bus_id:
            add(
                ln.id, f"line starts and ends at the same bus {ln.from_bus_id!r}; connect two different buses"
            )
        if ln.length_km <= 0:
            add(ln.id, f"length_km={ln.length_km} must be > 0; use a short length (0.001 km) for a jumper")
        for name in (
            "r_ohm_per_km",
            "x_ohm_per_km",
            "c_nf_per_km",
            "r0_ohm_per_km",
            "x0_ohm_per_km",
            "c0_nf_per_km",
        ):
            value = getattr(ln, name)
            if value is not None and value < 0:
                add(ln.id, f"{name}={value} is negative; line parameters must be >= 0")
        if ln.r_ohm_per_km == 0 and ln.x_ohm_per_km == 0:
            add(
                ln.id,
                "r_ohm_per_km and x_ohm_per_km are both 0 (zero impedance); "
                "model a zero-impedance connection as a BUS switch instead",
            )
        if ln.max_i_ka <= 0:
            add(ln.id, f"max_i_ka={ln.max_i_ka} must be > 0; set the conductor's thermal rating")
        if ln.parallel < 1:
            add(ln.id, f"parallel={ln.parallel} must be >= 1")
        if ok_from and ok_to:
            vf, vt = buses[ln.from_bus_id].vn_kv, buses[ln.to_bus_id].vn_kv
            if vf > 0 and vt > 0 and abs(vf - vt) > LINE_VN_TOLERANCE * max(vf, vt):
                add(
                    ln.id,
                    f"line joins {ln.from_bus_id!r} ({vf} kV) and {ln.to_bus_id!r} ({vt} kV); "
                    "a line cannot change voltage: use a Transformer or fix the bus vn_kv",
                )

    for t in feeder.transformers:
        bus_ref(t.id, "hv_bus_id", t.hv_bus_id)
        bus_ref(t.id, "lv_bus_id", t.lv_bus_id)
        if t.hv_bus_id == t.lv_bus_id:
            add(
                t.id, f"transformer hv and lv bus are the same ({t.hv_bus_id!r}); connect two different buses"
            )
        if t.sn_mva <= 0:
            add(t.id, f"sn_mva={t.sn_mva} must be > 0; set the rated power")
        if t.vn_hv_kv <= 0 or t.vn_lv_kv <= 0:
            add(t.id, f"rated voltages vn_hv_kv={t.vn_hv_kv}, vn_lv_kv={t.vn_lv_kv} must be > 0")
        if t.vk_percent <= 0:
            add(t.id, f"vk_percent={t.vk_percent} must be > 0 (short-circuit voltage, typically 4-12 %)")
        if t.vkr_percent < 0:
            add(t.id, f"vkr_percent={t.vkr_percent} must be >= 0")
        if t.vkr_percent > t.vk_percent:
            add(
                t.id,
                f"vkr_percent={t.vkr_percent} exceeds vk_percent={t.vk_percent}; "
                "the resistive part cannot exceed the total short-circuit voltage",
            )
        if t.pfe_kw < 0 or t.i0_percent < 0:
            add(t.id, f"pfe_kw={t.pfe_kw} and i0_percent={t.i0_percent} must be >= 0")
        if t.tap_side is not None and t.tap_side not in ("hv", "lv"):
            add(t.id, f"tap_side={t.tap_side!r} must be 'hv', 'lv' or unset")
        if t.tap_min is not None and t.tap_max is not None and t.tap_min > t.tap_max:
            add(t.id, f"tap_min={t.tap_min} is above tap_max={t.tap_max}; swap them")
        if t.tap_pos is not None:
            if t.tap_min is not None and t.tap_max is not None:
                if not t.tap_min <= t.tap_pos <= t.tap_max:
                    add(
                        t.id,
                        f"tap_pos={t.tap_pos} is outside [tap_min={t.tap_min}, tap_max={t.tap_max}]; "
                        "set a position inside the range",
                    )
            else:
                add(t.id, f"tap_pos={t.tap_pos} is set but tap_min/tap_max are not; give the tap range")

    for sw in feeder.switches:
        bus_ok = bus_ref(sw.id, "bus_id", sw.bus_id)
        if sw.is_open is not True and sw.is_open is not False:
            add(sw.id, f"is_open={sw.is_open!r} must be a bool")
        if sw.element_type == ElementType.LINE:
            line = lines.get(sw.element_id)
            if line is None:
                add(
                    sw.id,
                    f"element_id {sw.element_id!r} is not a line of this feeder "
                    "(element_type is LINE); correct the id or the element_type",
                )
            elif bus_ok and sw.bus_id not in (line.from_bus_id, line.to_bus_id):
                add(
                    sw.id,
                    f"bus {sw.bus_id!r} is not an end of line {line.id!r} "
                    f"({line.from_bus_id!r}-{line.to_bus_id!r}); put the switch at one of its ends",
                )
        elif sw.element_type == ElementType.TRANSFORMER:
            trafo = trafos.get(sw.element_id)
            if trafo is None:
                add(
                    sw.id,
                    f"element_id {sw.element_id!r} is not a transformer of this feeder "
                    "(element_type is TRANSFORMER); correct the id or the element_type",
                )
            elif bus_ok and sw.bus_id not in (trafo.hv_bus_id, trafo.lv_bus_id):
                add(
                    sw.id,
                    f"bus {sw.bus_id!r} is not an end of transformer {trafo.id!r} "
                    f"({trafo.hv_bus_id!r}/{trafo.lv_bus_id!r}); put the switch at its hv or lv bus",
                )
        elif sw.element_type == ElementType.BUS:
            if sw.element_id not in buses:
                add(
                    sw.id,
                    f"element_id {sw.element_id!r} is not a bus of this feeder "
                    "(element_type is BUS); correct the id or the element_type",
                )
            elif sw.element_id == sw.bus_id:
                add(sw.id, "bus switch connects a bus to itself; element_id must be another bus")
        else:  # pragma: no cover - the enum is closed
            add(sw.id, f"element_type {sw.element_type!r} is not LINE, TRANSFORMER or BUS")

    for ld in feeder.loads:
        bus_ref(ld.id, "bus_id", ld.bus_id)
        if ld.customers < 0:
            add(ld.id, f"customers={ld.customers} is negative; give the number of customers served (>= 0)")

    for d in feeder.ders:
        bus_ref(d.id, "bus_id", d.bus_id)
        if d.sn_mva <= 0:
            add(d.id, f"sn_mva={d.sn_mva} must be > 0; set the DER's rated apparent power")
        if d.max_e_mwh is not None and d.max_e_mwh < 0:
            add(d.id, f"max_e_mwh={d.max_e_mwh} must be >= 0 or left unset")
        if d.ieee1547_category not in ("A", "B"):
            add(d.id, f"ieee1547_category={d.ieee1547_category!r} must be 'A' or 'B' (IEEE 1547-2018 normal category)")
        if not 0.0 <= d.soc_min_pct < d.soc_max_pct <= 100.0:
            add(d.id, f"soc_min_pct={d.soc_min_pct} and soc_max_pct={d.soc_max_pct} must satisfy 0 <= min < max <= 100")
        for name in ("p_max_mw", "q_max_mvar"):
            cap = getattr(d, name)
            if cap is not None and not 0.0 <= cap <= d.sn_mva * 1.0001:
                add(d.id, f"{name}={cap} must be within [0, sn_mva={d.sn_mva}] or left unset")

    for c in feeder.capacitors:
        bus_ref(c.id, "bus_id", c.bus_id)
        if c.steps < 1:
            add(c.id, f"steps={c.steps} must be >= 1")
        if not 0 <= c.step <= max(c.steps, 0):
            add(c.id, f"step={c.step} must be within [0, steps={c.steps}]")

    for m in feeder.measurement_points:
        if m.element_id not in all_ids:
            add(
                m.id,
                f"element_id {m.element_id!r} is not an element of this feeder; "
                "bind the measurement to an existing element id",
            )

    for fi in feeder.fault_indicators:
        bus_ok = bus_ref(fi.id, "bus_id", fi.bus_id)
        line = lines.get(fi.line_id)
        if line is None:
            add(fi.id, f"line_id {fi.line_id!r} is not a line of this feeder; correct the id")
        elif bus_ok and fi.bus_id not in (line.from_bus_id, line.to_bus_id):
            add(
                fi.id,
                f"bus {fi.bus_id!r} is not an end of line {line.id!r} "
                f"({line.from_bus_id!r}-{line.to_bus_id!r}); the indicator sits at one end of its line",
            )

    if feeder.sources:
        _check_reachability(feeder, add)
    return out


def _check_ids(feeder: Feeder, add: _Add) -> None:
    counts: Counter[str] = Counter()
    kinds: dict[str, list[str]] = {}
    for e in feeder.elements():
        eid = getattr(e, "id", "")
        if not isinstance(eid, str) or not eid:
            add(feeder.id, f"a {type(e).__name__} has an empty id; give every element a unique id")
            continue
        counts[eid] += 1
        kinds.setdefault(eid, []).append(type(e).__name__)
    for eid, n in counts.items():
        if n > 1:
            add(
                eid,
                f"id is used by {n} elements ({', '.join(kinds[eid])}); "
                "ids must be unique across all elements of a feeder: rename all but one",
            )


def _check_numbers(feeder: Feeder, add: _Add) -> None:
    for name in ("sn_mva", "f_hz"):
        value = getattr(feeder, name)
        if isinstance(value, float) and not math.isfinite(value):
            add(feeder.id, f"{name}={value} is not a finite number; give a real value")
    for obj, owner in [(feeder.limits, feeder.id), *((e, getattr(e, "id", "")) for e in feeder.elements())]:
        if not is_dataclass(obj):
            continue
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                what = "limits." + f.name if obj is feeder.limits else f.name
                add(
                    owner,
                    f"{what}={value} is not a finite number; give a real value "
                    "(use None where the field is optional)",
                )


def _check_limits(feeder_id: str, lim: Limits, add: _Add) -> None:
    def bad(msg: str) -> None:
        add(feeder_id, "limits: " + msg)

    if lim.vm_min_pu <= 0 or lim.emergency_vm_min_pu <= 0:
        bad("voltage limits must be > 0 pu")
    if lim.vm_min_pu >= lim.vm_max_pu:
        bad(f"vm_min_pu={lim.vm_min_pu} must be below vm_max_pu={lim.vm_max_pu}")
    if lim.emergency_vm_min_pu >= lim.emergency_vm_max_pu:
        bad(
            f"emergency_vm_min_pu={lim.emergency_vm_min_pu} must be below "
            f"emergency_vm_max_pu={lim.emergency_vm_max_pu}"
        )
    if lim.emergency_vm_min_pu > lim.vm_min_pu or lim.emergency_vm_max_pu < lim.vm_max_pu:
        bad(
            f"the emergency band [{lim.emergency_vm_min_pu}, {lim.emergency_vm_max_pu}] pu must contain "
            f"the normal band [{lim.vm_min_pu}, {lim.vm_max_pu}] pu; widen the emergency band"
        )
    if lim.max_loading_percent <= 0:
        bad(f"max_loading_percent={lim.max_loading_percent} must be > 0 (typically 100)")
    if lim.emergency_max_loading_percent < lim.max_loading_percent:
        bad(
            f"emergency_max_loading_percent={lim.emergency_max_loading_percent} must be at least "
            f"max_loading_percent={lim.max_loading_percent}"
        )


def _check_reachability(feeder: Feeder, add: _Add) -> None:
    """Buses no source can reach with every switch closed and every branch in service."""
    adj: dict[str, list[str]] = {b.id: [] for b in feeder.buses if b.in_service}

    def link(a: str, b: str) -> None:
        if a in adj and b in adj:
            adj[a].append(b)
            adj[b].append(a)

    for ln in feeder.lines:
        link(ln.from_bus_id, ln.to_bus_id)
    for t in feeder.transformers:
        link(t.hv_bus_id, t.lv_bus_id)
    for sw in feeder.switches:
        if sw.element_type == ElementType.BUS:
            link(sw.bus_id, sw.element_id)
    seen = {s.bus_id for s in feeder.sources if s.bus_id in adj}
    queue = deque(seen)
    while queue:
        for nb in adj[queue.popleft()]:
            if nb not in seen:
                seen.add(nb)
                queue.append(nb)
    for bus_id in adj:
        if bus_id not in seen:
            add(
                bus_id,
                "bus cannot be reached from any source even with every switch closed "
                "(an island without supply); connect it with a line, transformer or bus switch, "
                "add a source to its island, or remove it",
            )
