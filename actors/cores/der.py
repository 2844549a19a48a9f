"""DER management core: IEEE 1547-2018 curves, control validation, inverter response, curtailment.

A pure core (no Ray, sockets or files). What it knows:

* **Curves** (IEEE 1547-2018 clause 5.3.3 volt-var, 5.4.2 volt-watt) as points of (voltage in % of
  nominal, value in % of a reference): volt-var in % of the DER's reactive capability (positive
  injects, over-excited), volt-watt in % of its active power rating. :func:`default_volt_var` and
  :func:`default_volt_watt` give the category A/B defaults of Tables 8 and 10;
  :func:`validate_volt_var` / :func:`validate_volt_watt` refuse a curve that is not monotone or
  leaves the standard's ranges (``BAD_INPUT`` naming the limit), so nothing is sent.
* **Controls** (:class:`DerControl`): P limit, power factor, Q set point, curves, enter
  service / cease, storage P set point. :func:`validate_control` checks each against the DER's
  rating and capability.
* **Inverter response** (:func:`inverter_target`, :func:`ramp_towards`): what a 1547 inverter does
  with its settings at a terminal voltage and an available power, within its kVA, P and Q ratings
  (reactive priority, as 1547 requires for volt-var); the field simulator's inverters run it, so
  the simulated field behaves as the standard says and tests can compare against it.
* **Curtailment** (:func:`curtailment`): from an estimated state, which DERs must be limited (and
  to what) because a line or transformer would overload or a voltage would exceed its limit, with
  the reason; the DER application releases a limit when its reason is gone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from graph_schema.errors import BadInput
from graph_schema.model import Der, DerKind, Feeder

__all__ = [
    "VV_Q_TOLERANCE_PCT_S",
    "Curtailment",
    "Curve",
    "DerControl",
    "DerRating",
    "InverterSettings",
    "curtailment",
    "curve_value",
    "default_volt_var",
    "default_volt_watt",
    "inverter_target",
    "ramp_towards",
    "rating",
    "validate_control",
    "validate_volt_var",
    "validate_volt_watt",
]

# IEEE 1547-2018 Table 3: reactive power accuracy within 5 % of the DER's rated apparent power.
VV_Q_TOLERANCE_PCT_S = 5.0

Curve = tuple[tuple[float, float], ...]  # ((v_pct_vnom, value_pct), ...) in increasing voltage


# -- ratings ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerRating:
    """What a DER can do: apparent power, active and reactive capability (MW/Mvar, >= 0)."""

    der_id: str
    s_mva: float
    p_max_mw: float
    q_max_mvar: float
    storage: bool
    category: str
    max_e_mwh: float | None = None
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0


def rating(der: Der) -> DerRating:
    """The rating of ``der``; reactive capability defaults to 1547's minimum for its category
    (44 % of rated S for category B, 25 % for A)."""
    q_default = (0.44 if der.ieee1547_category == "B" else 0.25) * der.sn_mva
    return DerRating(
        der_id=der.id, s_mva=der.sn_mva, p_max_mw=der.p_max_mw if der.p_max_mw is not None else der.sn_mva,
        q_max_mvar=der.q_max_mvar if der.q_max_mvar is not None else q_default,
        storage=der.kind is DerKind.STORAGE, category=der.ieee1547_category, max_e_mwh=der.max_e_mwh,
        soc_min_pct=der.soc_min_pct, soc_max_pct=der.soc_max_pct,
    )


# -- curves ----------------------------------------------------------------------------------------


def default_volt_var(category: str = "B") -> Curve:
    """IEEE 1547-2018 Table 8 defaults (VRef = 100 %): B: 92/98/102/108 % with Q = +100/0/0/-100 %
    of the reactive capability (which is 44 % of S); A: 90/100/100/110 % (capability 25 % of S)."""
    if category == "A":
        return ((90.0, 100.0), (100.0, 0.0), (100.0, 0.0), (110.0, -100.0))
    return ((92.0, 100.0), (98.0, 0.0), (102.0, 0.0), (108.0, -100.0))


def default_volt_watt(category: str = "B") -> Curve:
    """IEEE 1547-2018 Table 10 defaults: 100 % of rated P up to 106 % Vnom, 0 % at 110 % Vnom."""
    return ((106.0, 100.0), (110.0, 0.0))


def curve_value(curve: Curve, v_pct: float) -> float:
    """Piecewise-linear value of ``curve`` at ``v_pct`` (flat beyond the end points)."""
    if not curve:
        return 0.0
    if v_pct <= curve[0][0]:
        return curve[0][1]
    for (v0, y0), (v1, y1) in itertools.pairwise(curve):
        if v_pct <= v1:
            if v1 == v0:
                return y1
            return y0 + (y1 - y0) * (v_pct - v0) / (v1 - v0)
    return curve[-1][1]


def _curve_shape(curve: Sequence[Sequence[float]], what: str, n: int | None) -> Curve:
    pts = tuple((float(v), float(y)) for v, y in curve)
    if n is not None and len(pts) != n:
        raise BadInput(f"a {what} curve has exactly {n} points (IEEE 1547-2018); got {len(pts)}")
    if any(not (math.isfinite(v) and math.isfinite(y)) for v, y in pts):
        raise BadInput(f"the {what} curve has a value that is not a finite number")
    for (v0, y0), (v1, y1) in itertools.pairwise(pts):
        if v1 < v0:
            raise BadInput(f"the {what} curve is not monotone: voltage {v1:g} % follows {v0:g} %; give the points "
                           f"in increasing voltage")
        if y1 > y0:
            raise BadInput(f"the {what} curve is not monotone: its value rises from {y0:g} % to {y1:g} % between "
                           f"{v0:g} % and {v1:g} % Vnom; it must not increase with voltage")
    return pts


def validate_volt_var(curve: Sequence[Sequence[float]]) -> Curve:
    """A volt-var curve within IEEE 1547-2018 Table 8 ranges (VRef = 100 %, category B ranges,
    which contain A's): V1 in [77, V2-2], V2 in [97, 100], V3 in [100, 103], V4 in [V3+2, 118] % Vnom;
    Q1 in [0, 100] %, Q4 in [-100, 0] % of the reactive capability. ``BadInput`` names the limit."""
    pts = _curve_shape(curve, "volt-var", 4)
    (v1, q1), (v2, q2), (v3, q3), (v4, q4) = pts

    def within(name: str, value: float, lo: float, hi: float, unit: str) -> None:
        if not lo - 1e-9 <= value <= hi + 1e-9:
            raise BadInput(f"volt-var {name}={value:g} {unit} is outside the IEEE 1547-2018 range [{lo:g}, {hi:g}] "
                           f"{unit}")

    within("V2", v2, 97.0, 100.0, "% Vnom")
    within("V3", v3, 100.0, 103.0, "% Vnom")
    within("V1", v1, 77.0, v2 - 2.0, "% Vnom")
    within("V4", v4, v3 + 2.0, 118.0, "% Vnom")
    within("Q1", q1, 0.0, 100.0, "% of Q capability")
    within("Q2", q2, -100.0, 100.0, "% of Q capability")
    within("Q3", q3, -100.0, 100.0, "% of Q capability")
    within("Q4", q4, -100.0, 0.0, "% of Q capability")
    return pts


def validate_volt_watt(curve: Sequence[Sequence[float]]) -> Curve:
    """A volt-watt curve within IEEE 1547-2018 Table 10 ranges: V1 in [105, 109] % Vnom, V2 in
    [V1+1, 110] % Vnom, P1 = 100 %, P2 in [0, 100] % of rated P (storage may go to -100 %)."""
    pts = _curve_shape(curve, "volt-watt", 2)
    (v1, p1), (v2, p2) = pts
    if not 105.0 <= v1 <= 109.0:
        raise BadInput(f"volt-watt V1={v1:g} % Vnom is outside the IEEE 1547-2018 range [105, 109] % Vnom")
    if not v1 + 1.0 - 1e-9 <= v2 <= 110.0:
        raise BadInput(f"volt-watt V2={v2:g} % Vnom is outside the IEEE 1547-2018 range [V1+1={v1 + 1:g}, 110] % Vnom")
    if p1 != 100.0:
        raise BadInput(f"volt-watt P1={p1:g} % must be 100 % of rated P (IEEE 1547-2018 Table 10)")
    if not -100.0 <= p2 <= 100.0:
        raise BadInput(f"volt-watt P2={p2:g} % is outside [-100, 100] % of rated P")
    return pts


# -- controls --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerControl:
    """One command to one DER; unset fields are left as they are on the device.

    ``p_limit_mw``: None leaves it, a negative value is refused; ``release_p_limit`` lifts the limit.
    ``power_factor``: (pf, injecting) with pf in (0, 1]; ``q_mvar``: a fixed reactive set point
    (positive injects); ``volt_var``/``volt_watt``: curves (see :func:`validate_volt_var`) with
    ``curves_enabled``; ``enter_service``: False ceases to energize; ``storage_p_mw``: a storage
    set point (positive discharges)."""

    p_limit_mw: float | None = None
    release_p_limit: bool = False
    power_factor: tuple[float, bool] | None = None
    q_mvar: float | None = None
    volt_var: Curve | None = None
    volt_var_enabled: bool | None = None
    volt_watt: Curve | None = None
    volt_watt_enabled: bool | None = None
    enter_service: bool | None = None
    storage_p_mw: float | None = None

    def describe(self) -> str:
        parts = []
        for name in ("p_limit_mw", "power_factor", "q_mvar", "volt_var", "volt_var_enabled", "volt_watt",
                     "volt_watt_enabled", "enter_service", "storage_p_mw"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v}")
        if self.release_p_limit:
            parts.append("release_p_limit")
        return ", ".join(parts) or "nothing"

    @property
    def empty(self) -> bool:
        return self.describe() == "nothing"


def validate_control(r: DerRating, c: DerControl) -> DerControl:
    """``c`` when it fits the DER's rating and IEEE 1547 ranges; ``BadInput`` naming the limit."""
    if c.empty:
        raise BadInput(f"the control for {r.der_id} sets nothing; give a P limit, a power factor, a Q set point, "
                       f"a curve, enter service or a storage set point")
    if c.p_limit_mw is not None and not 0.0 <= c.p_limit_mw <= r.p_max_mw + 1e-9:
        raise BadInput(f"P limit {c.p_limit_mw:g} MW of {r.der_id} is beyond its rating: between 0 and "
                       f"p_max_mw={r.p_max_mw:g} MW", element_id=r.der_id)
    if c.q_mvar is not None and abs(c.q_mvar) > r.q_max_mvar + 1e-9:
        raise BadInput(f"Q set point {c.q_mvar:g} Mvar of {r.der_id} is beyond its reactive capability: within "
                       f"+/-q_max_mvar={r.q_max_mvar:g} Mvar", element_id=r.der_id)
    if c.power_factor is not None:
        pf = c.power_factor[0]
        # The PF must be reachable at full P within the reactive capability.
        pf_min = r.p_max_mw / math.hypot(r.p_max_mw, r.q_max_mvar) if r.p_max_mw > 0 else 1.0
        if not pf_min - 1e-6 <= pf <= 1.0:
            raise BadInput(f"power factor {pf:g} of {r.der_id} is beyond its capability: between {pf_min:.3f} "
                           f"(q_max_mvar={r.q_max_mvar:g} at p_max_mw={r.p_max_mw:g}) and 1", element_id=r.der_id)
    if sum(x is not None for x in (c.power_factor, c.q_mvar)) > 1:
        raise BadInput("give either a power factor or a Q set point, not both (they are exclusive modes)")
    if c.storage_p_mw is not None:
        if not r.storage:
            raise BadInput(f"{r.der_id} is not storage: a charge/discharge set point needs a STORAGE DER",
                           element_id=r.der_id)
        if abs(c.storage_p_mw) > r.p_max_mw + 1e-9:
            raise BadInput(f"storage set point {c.storage_p_mw:g} MW of {r.der_id} is beyond its rating: within "
                           f"+/-p_max_mw={r.p_max_mw:g} MW", element_id=r.der_id)
    if c.volt_var is not None:
        validate_volt_var(c.volt_var)
    if c.volt_watt is not None:
        validate_volt_watt(c.volt_watt)
    return c


# -- inverter response -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InverterSettings:
    """The active settings of one inverter (what SunSpec models 702-706 hold)."""

    s_mva: float
    p_max_mw: float
    q_max_mvar: float
    connected: bool = True  # model 703 ES: permitted to enter service
    p_limit_pct: float | None = None  # model 704 WMaxLimPct when enabled
    p_set_mw: float | None = None  # model 704 WSet when enabled (storage: + discharge, - charge)
    pf: tuple[float, bool] | None = None  # model 704 PFWInj (pf, injecting/over-excited)
    q_set_mvar: float | None = None  # model 704 VarSet when enabled
    volt_var: Curve | None = None  # model 705 when enabled (value in % of q_max_mvar)
    volt_watt: Curve | None = None  # model 706 when enabled (value in % of p_max_mw)
    response_time_s: float = 5.0  # open-loop response time (1547 cat B volt-var default 5 s)
    ramp_pct_per_s: float = 100.0  # model 704 WRmp: % of p_max_mw per second
    storage: bool = False
    soc_pct: float | None = None
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0


def inverter_target(s: InverterSettings, v_pu: float, p_avail_mw: float) -> tuple[float, float]:
    """The (p_mw, q_mvar) an inverter settles at, at terminal voltage ``v_pu`` with ``p_avail_mw``
    available from its source (PV, wind: the resource; storage: ignored, its set point counts).

    Order: enter service; P from the resource or the storage set point (SOC limits), capped by the
    P limit and the volt-watt curve; Q from the fixed set point, else the power factor, else the
    volt-var curve, within the reactive capability; then the kVA limit with reactive priority
    (P is reduced, not Q, as 1547 requires of volt-var)."""
    if not s.connected:
        return 0.0, 0.0
    if s.storage:
        p = s.p_set_mw or 0.0
        if s.soc_pct is not None:
            if p > 0 and s.soc_pct <= s.soc_min_pct:
                p = 0.0
            if p < 0 and s.soc_pct >= s.soc_max_pct:
                p = 0.0
        p = max(-s.p_max_mw, min(s.p_max_mw, p))
    else:
        p = max(0.0, min(p_avail_mw, s.p_max_mw))
        if s.p_set_mw is not None:
            p = min(p, max(0.0, s.p_set_mw))
    if s.p_limit_pct is not None:
        p = min(p, s.p_max_mw * max(0.0, s.p_limit_pct) / 100.0)
    if s.volt_watt is not None:
        p = min(p, s.p_max_mw * curve_value(s.volt_watt, v_pu * 100.0) / 100.0)
    if s.q_set_mvar is not None:
        q = s.q_set_mvar
    elif s.pf is not None:
        pf, injecting = s.pf
        q = abs(p) * math.tan(math.acos(max(min(pf, 1.0), 1e-6))) * (1.0 if injecting else -1.0)
    elif s.volt_var is not None:
        q = s.q_max_mvar * curve_value(s.volt_var, v_pu * 100.0) / 100.0
    else:
        q = 0.0
    q = max(-s.q_max_mvar, min(s.q_max_mvar, q))
    if math.hypot(p, q) > s.s_mva:
        q = math.copysign(min(abs(q), s.s_mva), q)
        p = math.copysign(math.sqrt(max(0.0, s.s_mva**2 - q**2)), p)
    return p, q


def ramp_towards(p_now: float, q_now: float, target: tuple[float, float], s: InverterSettings,
                 dt_s: float) -> tuple[float, float]:
    """One step of ``dt_s`` towards ``target``: P decreases at once (curtailment, volt-watt) and
    rises at ``ramp_pct_per_s``; Q follows a first-order response with ``response_time_s`` (90 %
    of the step within it, as 1547 defines the open-loop response time)."""
    p_t, q_t = target
    if dt_s <= 0:
        return p_now, q_now
    max_up = s.p_max_mw * s.ramp_pct_per_s / 100.0 * dt_s
    p = p_t if p_t <= p_now else min(p_t, p_now + max_up)
    tau = max(s.response_time_s, 1e-3) / math.log(10.0)  # 90 % in response_time_s
    q = q_t + (q_now - q_t) * math.exp(-dt_s / tau)
    return p, q


# -- curtailment -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Curtailment:
    """A P limit for one DER and why; ``reason`` names the element and the limit."""

    der_id: str
    p_limit_mw: float
    reason: str
    element_id: str


@dataclass(frozen=True, slots=True)
class CurtailmentInput:
    """The estimated state the decision reads (from the feeder's live state).

    ``downstream`` and ``load_p_mw`` let the decision tell who causes an overload: ``downstream(e)``
    is the set of energized buses whose supply passes through line or transformer ``e`` (radial
    operation; empty for a loop's closing branch), ``load_p_mw`` what each load draws now.
    ``source_of_bus`` (energized bus -> its source) confines an over-voltage to the DERs fed from
    the same source. Without ``downstream`` every producing DER shares every curtailment (the
    decision cannot attribute the flow)."""

    vm_pu: Mapping[str, float | None]
    line_loading_percent: Mapping[str, float]
    trafo_loading_percent: Mapping[str, float] = field(default_factory=dict)
    der_p_mw: Mapping[str, float] = field(default_factory=dict)  # what each DER produces now
    load_p_mw: Mapping[str, float] = field(default_factory=dict)  # what each load draws now
    downstream: Callable[[str], frozenset[str]] | None = None
    source_of_bus: Mapping[str, str] = field(default_factory=dict)


def _reverse_flow(feeder: Feeder, state: CurtailmentInput, element_id: str) -> tuple[frozenset[str], float] | None:
    """The buses behind ``element_id`` and the net power pushed back through it towards the source
    (MW: every DER behind it, storage included, less every load behind it), or None when the
    element carries power towards its loads (a load-driven overload: curtailing the DERs behind it
    would only raise its loading) or cannot be attributed (a loop's closing branch)."""
    assert state.downstream is not None
    down = state.downstream(element_id)
    if not down:
        return None
    gen = sum(state.der_p_mw.get(d.id, 0.0) for d in feeder.ders if d.in_service and d.bus_id in down)
    load = sum(state.load_p_mw.get(ld.id, ld.p_mw) for ld in feeder.loads if ld.in_service and ld.bus_id in down)
    return (down, gen - load) if gen - load > 1e-6 else None


def curtailment(feeder: Feeder, state: CurtailmentInput, *, vm_max_pu: float | None = None,
                max_loading_percent: float | None = None, margin: float = 0.05, deadband: float = 0.05,
                current: Mapping[str, Curtailment] | None = None,
                exempt: frozenset[str] = frozenset()) -> dict[str, Curtailment]:
    """Which DERs to limit now, and to what.

    **Overload** of a line or transformer beyond ``max_loading_percent`` (the feeder's limit unless
    given). With ``state.downstream`` (the host passes it) the decision attributes the flow: only
    an element that carries *reverse* power (the DERs behind it produce more than the loads behind
    it draw) is a reason to curtail, and only the DERs behind it are curtailed, each by the same
    share of its present output, so that the reverse flow falls to ``1 - margin`` of the limit
    (loading taken proportional to the active flow). A load-driven overload is no reason: the DERs
    behind it relieve it, and curtailing them would raise its loading. Without ``downstream``,
    every producing DER is limited to its rating times ``1 - excess - margin`` (``excess``: the
    loading ratio beyond the limit).

    **Over-voltage** at a bus above ``vm_max_pu``: every producing PV/wind DER fed from the same
    source is limited to its rating times ``1 - excess - margin`` (``excess``: the rise above the
    limit over the rise above 1 pu).

    Each DER takes the tightest limit any violation asks of it, with that violation's reason.
    Limits only tighten while a reason holds (a new limit within ``deadband`` of the rating of the
    one in force keeps the one in force), so they do not hunt; a curtailment whose element is back
    within ``1 - 2 x margin`` of its loading limit (0.01 pu below the voltage limit), or whose
    element no longer carries reverse power, is dropped: released. Storage is never curtailed here
    (its schedule rules it); DERs in ``exempt`` (an operator released them) neither."""
    vmax = vm_max_pu if vm_max_pu is not None else feeder.limits.vm_max_pu
    lmax = max_loading_percent if max_loading_percent is not None else feeder.limits.max_loading_percent
    current = current or {}
    ratings = {d.id: rating(d).p_max_mw for d in feeder.ders}
    bus_of = {d.id: d.bus_id for d in feeder.ders}
    candidates = [d.id for d in feeder.ders if d.in_service and d.kind is not DerKind.STORAGE and d.id not in exempt
                  and (state.der_p_mw.get(d.id, 0.0) > 1e-6 or d.id in current)]
    asks: dict[str, tuple[float, str, str]] = {}  # der id -> (limit, reason, element): the tightest

    def ask(did: str, limit: float, reason: str, eid: str) -> None:
        limit = round(max(0.0, limit), 6)
        if did not in asks or limit < asks[did][0]:
            asks[did] = (limit, reason, eid)

    for eid, loading in {**state.line_loading_percent, **state.trafo_loading_percent}.items():
        if loading <= lmax:
            continue
        reason = f"{eid} loaded {loading:.1f} % beyond its limit {lmax:g} %"
        if state.downstream is None:
            factor = max(0.0, 1.0 - (loading / lmax - 1.0) - margin)
            for did in candidates:
                ask(did, ratings[did] * factor, reason, eid)
            continue
        rf = _reverse_flow(feeder, state, eid)
        if rf is None:
            continue
        down, net = rf
        behind = [d for d in candidates if bus_of[d] in down]
        gen = sum(max(0.0, state.der_p_mw.get(d, 0.0)) for d in behind)
        share = min(1.0, net * (1.0 - lmax * (1.0 - margin) / loading) / gen) if gen > 0 else 1.0
        for did in behind:
            ask(did, max(0.0, state.der_p_mw.get(did, 0.0)) * (1.0 - share), reason + " by reverse power", eid)
    for bid, vm in state.vm_pu.items():
        if vm is None or vm <= vmax:
            continue
        factor = max(0.0, 1.0 - (vm - vmax) / max(vm - 1.0, 1e-3) - margin)
        src = state.source_of_bus.get(bid)
        for did in candidates:
            if src is None or state.source_of_bus.get(bus_of[did]) == src:
                ask(did, ratings[did] * factor, f"{bid} at {vm:.3f} pu above its limit {vmax:g} pu", bid)
    out: dict[str, Curtailment] = {}
    for did, (limit, reason, eid) in asks.items():
        prev = current.get(did)
        if prev is not None and limit >= prev.p_limit_mw - deadband * ratings[did]:
            out[did] = prev
        else:
            out[did] = Curtailment(did, limit, reason, eid)
    for did, prev in current.items():
        if did in out:
            continue
        el = prev.element_id
        loading = state.line_loading_percent.get(el, state.trafo_loading_percent.get(el))
        vm = state.vm_pu.get(el)
        if loading is not None and loading > lmax * (1.0 - 2 * margin):
            if state.downstream is None or _reverse_flow(feeder, state, el) is not None:
                out[did] = prev
        elif vm is not None and vm > vmax - 0.01:
            out[did] = prev
    return out
