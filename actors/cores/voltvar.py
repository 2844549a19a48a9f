"""Volt/VAR optimisation (VVO) and conservation voltage reduction (CVR), as a pure core.

:class:`VoltVarPlanner` chooses capacitor steps, tap positions (substation OLTCs and line voltage
regulators), DER reactive power and, as a last resort, DER active-power curtailment for one feeder
in one operating state (:class:`VoltVarState`: the estimated loads, the available DER output, the
devices' present positions, who is held by someone else, and how many operations each device has
left today). It returns a frozen :class:`VoltVarPlan`: the operations to get there and the predicted
losses and voltages, validated by a full pandapower power flow.

Objective (chosen per feeder by the operator, :class:`Objective`):

* ``LOSSES``: minimise line and transformer losses (MW).
* ``CVR``: minimise the demand the loads draw plus the losses, with the stated voltage dependence
  ``P_i(V) = P_i * V_i ** cvr_factor`` (CVR factor 0.8 %P per %V by default, the middle of the
  0.6-1.0 measured for residential feeders); every customer bus (a bus with a load) must stay at
  least ``cvr_margin_pu`` above the band's floor. The power flow itself keeps loads constant-power
  (as the estimator and the rest of the head-end do); the dependence prices the solved voltages.

Always subject to the feeder's normal limits: ``vm_min_pu <= V <= vm_max_pu`` at every energized bus
and ``loading_percent <= max_loading_percent`` on every line and transformer. Constraints enter
the search as penalties (``voltage_penalty_mw_per_pu`` per pu outside the band, summed over the
buses, and ``loading_penalty_mw_per_percent`` per percent of overload), so a candidate that
violates less always scores better than one that violates more, and feasible ones compare by
objective alone; ``feasible`` in the result is decided on the validated power flow.

Search (every candidate is a full AC power flow; screened in batches by
:class:`~actors.cores.batched.BatchedPowerFlow`, the chosen one validated by pandapower):

1. **Discrete steepest descent.** From a start point, every single move of every free discrete
   device is evaluated at once in one batch: a capacitor bank tries all its steps when it has at
   most ``full_range_max`` positions, a tap changer (17-33 positions) tries +-1, +-2, +-4, +-8
   steps (a pattern search that crosses the range in a few iterations). The best move is taken if
   it gains at least ``move_gain_mw`` (the per-move deadband: equal candidates never alternate),
   and the sweep repeats until no move gains. Then, once, every *pair* of devices moves together
   (tap pairs within +-``pair_tap_steps``): an OLTC and a line regulator in series, or two banks, trade their
   effect along valleys where no single move gains; if a pair gains, single moves resume.
   Screening cost: a tap combination compiles a network (one pandapower solve and one LU, kept in
   a cache); capacitor banks never do: they are screened as Q injections at their bus corrected
   for ``V^2`` (constant admittance) over ``cap_passes`` fixed-point passes, on the network of the
   tap combination, and the chosen plan is validated with the banks as real shunts.
2. **Continuous DER Q by sensitivity.** Finite differences (one batch of ``n_der + 1`` scenarios on
   one compiled network, cheap) give the gradient of the penalised objective in each DER's Q; a
   projected-gradient line search (one batch of step lengths) moves all Q at once within each
   DER's capability ``|Q| <= sqrt(S_n^2 - P^2)``. A few iterations.
3. Steps 1 and 2 alternate until neither changes anything (``max_rounds``).
4. **Restarts**: the same descent from the present settings and from two extreme starts (taps at
   neutral with every bank out / every bank in); the best result wins. Coupled devices (two banks
   on one lateral, an OLTC and a regulator in series) leave local optima that a single start can
   be caught in. The restarts search the discrete devices only; DER Q (step 2, a flow per DER per
   gradient) then alternates with the descent from the winner alone.
5. **Curtailment, last resort**: only if the best plan still violates a limit, the DER whose
   curtailment by ``curtail_step`` of its available output helps most is curtailed, repeatedly,
   until the plan is feasible (or nothing helps); Q is re-optimised after.

Against hunting and wear: a device with no operations left today or ``held`` by someone else (the
arbiter: FDIR, a fault, an operator's tag or selection) is fixed at its position; a tap changer or
bank moves at most ``ops_left`` steps; a whole plan that gains less than ``min_gain_mw`` and fixes
no violation is dropped (``reason`` says so); DER Q changes under ``q_deadband_mvar`` are not sent.

How close it gets: on the unit tests' hand-made feeders and on ``case33bw-vvo`` the descent finds
the exhaustive optimum over the discrete devices (ratio 1.00, ``bench/voltvar.py`` prints it); on
1,000+ buses the exhaustive search is infeasible and the bench reports the gain over the start.

:meth:`VoltVarPlanner.exhaustive` enumerates every discrete combination (DER Q held) for the tests
and the bench. Nothing here does I/O; the feeder is never mutated.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from actors.cores.batched import BatchedPowerFlow, BatchResult, Scenarios, Topology
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import Der, DerKind, Feeder, Limits

_CAP_PREFIX = "~cap:"  # screening injections standing for capacitor banks (not a model id)


class Objective(StrEnum):
    LOSSES = "LOSSES"
    CVR = "CVR"


class VoltVarAction(StrEnum):
    """What an operation does; DER operations go through the execution layer's DER hook."""

    SET_CAPACITOR_STEP = "SET_CAPACITOR_STEP"
    SET_TAP_POSITION = "SET_TAP_POSITION"
    SET_DER_Q = "SET_DER_Q"
    CURTAIL_DER_P = "CURTAIL_DER_P"


class RegulatorKind(StrEnum):
    OLTC = "OLTC"
    REGULATOR = "REGULATOR"


class DeviceKind(StrEnum):
    CAPACITOR = "CAPACITOR"
    TAP_CHANGER = "TAP_CHANGER"
    DER = "DER"


@dataclass(frozen=True, slots=True)
class Operation:
    device_id: str
    device_kind: DeviceKind
    action: VoltVarAction
    value: float
    from_value: float


@dataclass(frozen=True, slots=True)
class VoltVarOptions:
    objective: Objective = Objective.LOSSES
    cvr_factor: float = 0.8
    cvr_margin_pu: float = 0.01
    use_der_q: bool = True
    allow_curtailment: bool = True
    min_gain_mw: float = 0.001
    move_gain_mw: float = 1e-5
    q_deadband_mvar: float = 0.005
    max_rounds: int = 4
    max_moves: int = 60
    full_range_max: int = 9
    q_iterations: int = 6
    restarts: bool = True
    pair_moves: bool = True
    pair_tap_steps: int = 2
    curtail_step: float = 0.1
    max_curtail_steps: int = 20
    voltage_penalty_mw_per_pu: float = 100.0
    loading_penalty_mw_per_percent: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.cvr_factor <= 3.0:
            raise BadInput(f"cvr_factor={self.cvr_factor}: give the %P per %V of the loads, 0..3 (typically 0.6-1.0)")
        if not 0.0 <= self.cvr_margin_pu < 0.1:
            raise BadInput(f"cvr_margin_pu={self.cvr_margin_pu}: give a margin above the band's floor in 0..0.1 pu")
        if not 0.0 < self.curtail_step <= 1.0:
            raise BadInput(f"curtail_step={self.curtail_step}: give a fraction of available output in (0, 1]")


@dataclass(frozen=True, slots=True)
class VoltVarState:
    """The operating state to plan for; ``None`` keeps the model's values.

    ``der_p_mw`` is what each DER can produce now (curtailment reduces it); ``held`` are device ids
    the planner must not move; ``ops_left`` how many more steps a device may make today (absent:
    no limit)."""

    load_p_mw: Mapping[str, float] | None = None
    load_q_mvar: Mapping[str, float] | None = None
    der_p_mw: Mapping[str, float] | None = None
    der_q_mvar: Mapping[str, float] | None = None
    tap_pos: Mapping[str, int] | None = None
    capacitor_step: Mapping[str, int] | None = None
    switch_states: Mapping[str, bool] | None = None
    held: frozenset[str] = frozenset()
    ops_left: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Figures:
    """One validated operating point (pandapower)."""

    converged: bool
    losses_mw: float
    min_vm_pu: float
    max_vm_pu: float
    demand_mw: float  # the loads' demand with the CVR voltage dependence
    objective_mw: float
    violations: int
    feasible: bool


@dataclass(frozen=True, slots=True)
class VoltVarPlan:
    feeder_id: str
    objective: Objective
    operations: tuple[Operation, ...]
    tap_pos: Mapping[str, int]
    capacitor_step: Mapping[str, int]
    der_q_mvar: Mapping[str, float]
    der_p_mw: Mapping[str, float]
    before: Figures
    after: Figures
    reason: str | None  # why nothing or not everything could be done; None when all is well
    held: tuple[str, ...]  # devices left alone because someone else holds them
    evaluations: int  # power flows screened
    plan_time_s: float

    @property
    def feasible(self) -> bool:
        return self.after.feasible

    @property
    def predicted_losses_mw(self) -> float:
        return self.after.losses_mw

    @property
    def predicted_min_vm_pu(self) -> float:
        return self.after.min_vm_pu

    @property
    def predicted_max_vm_pu(self) -> float:
        return self.after.max_vm_pu


@dataclass(frozen=True, slots=True)
class _Device:
    id: str
    kind: DeviceKind
    values: tuple[int, ...]  # allowed positions (ops limits and hold applied)
    current: int


@dataclass(slots=True)
class _Point:
    disc: tuple[int, ...]
    q: np.ndarray
    p: np.ndarray
    score: float = math.inf


class VoltVarPlanner:
    """Plans Volt/VAR for one feeder; keeps its compiled networks between calls (reuse it)."""

    def __init__(self, feeder: Feeder, *, max_topologies: int = 512, cap_passes: int = 3) -> None:
        self.feeder = feeder
        self._cap_list = [c for c in feeder.capacitors if c.in_service]
        # Screening network: every bank out of the admittance matrix and in its place a Q injection
        # at its bus (corrected for V^2 between passes), so that capacitor moves never compile a
        # new network; only tap positions (and switching) do.
        screen = replace(
            feeder,
            capacitors=tuple(replace(c, step=0) for c in feeder.capacitors),
            ders=(*feeder.ders, *(Der(f"{_CAP_PREFIX}{c.id}", c.bus_id, DerKind.OTHER,
                                      sn_mva=max(c.q_mvar * c.steps, 1e-3), p_mw=0.0) for c in self._cap_list)),
        )
        self._bpf = BatchedPowerFlow(screen, max_topologies=max_topologies)
        self._validator = PowerFlowModel(feeder)
        self._cap_passes = max(1, cap_passes)
        bus_index = {b: i for i, b in enumerate(self._bpf.bus_ids)}
        self._cap_bus = np.array([bus_index[c.bus_id] for c in self._cap_list], dtype=np.int64)
        self._cap_q = np.array([c.q_mvar for c in self._cap_list], dtype=float)
        self._load_bus = np.array([bus_index[ld.bus_id] for ld in feeder.loads], dtype=np.int64)
        self._customer_bus = np.unique(self._load_bus)
        self._load_p0 = np.array([ld.p_mw if ld.in_service else 0.0 for ld in feeder.loads], dtype=float)
        self._load_q0 = np.array([ld.q_mvar if ld.in_service else 0.0 for ld in feeder.loads], dtype=float)
        self._ders = list(feeder.ders)
        self._der_index = {d.id: i for i, d in enumerate(self._ders)}
        self._caps = {c.id: c for c in feeder.capacitors}
        self._taps = {t.id: t for t in feeder.transformers if t.has_tap_changer}
        self.evaluations = 0

    # ------------------------------------------------------------------ inputs

    def _array(self, ids: Sequence[str], base: np.ndarray, values: Mapping[str, float] | None, what: str) -> np.ndarray:
        out = base.copy()
        if values:
            index = {eid: i for i, eid in enumerate(ids)}
            for eid, v in values.items():
                i = index.get(eid)
                if i is None:
                    raise NotFound(f"{what} {eid!r} is not in feeder {self.feeder.id!r}; check the id", element_id=eid)
                if not math.isfinite(float(v)):
                    raise BadInput(f"{what} {eid!r}: value {v!r} is not a finite number", element_id=eid)
                out[i] = float(v)
        return out

    def _devices(self, state: VoltVarState) -> list[_Device]:
        devs: list[_Device] = []
        taps = dict(state.tap_pos or {})
        caps = dict(state.capacitor_step or {})
        for k in taps:
            if k not in self._taps:
                raise NotFound(f"tap changer {k!r} is not in feeder {self.feeder.id!r}; check the id", element_id=k)
        for k in caps:
            if k not in self._caps:
                raise NotFound(f"capacitor {k!r} is not in feeder {self.feeder.id!r}; check the id", element_id=k)
        for t in self._taps.values():
            assert t.tap_min is not None and t.tap_max is not None
            cur = int(taps.get(t.id, t.tap_pos if t.tap_pos is not None else (t.tap_neutral or 0)))
            if not t.tap_min <= cur <= t.tap_max:
                raise BadInput(f"tap changer {t.id!r}: position {cur} is outside its range "
                               f"[{t.tap_min}, {t.tap_max}]", element_id=t.id)
            devs.append(_Device(t.id, DeviceKind.TAP_CHANGER, self._allowed(t.id, cur, t.tap_min, t.tap_max, state),
                                cur))
        for c in self._caps.values():
            if not c.in_service:
                continue
            cur = int(caps.get(c.id, c.step))
            if not 0 <= cur <= c.steps:
                raise BadInput(f"capacitor {c.id!r}: step {cur} does not exist (it has steps 0..{c.steps})",
                               element_id=c.id)
            devs.append(_Device(c.id, DeviceKind.CAPACITOR, self._allowed(c.id, cur, 0, c.steps, state), cur))
        return devs

    @staticmethod
    def _allowed(dev: str, cur: int, lo: int, hi: int, state: VoltVarState) -> tuple[int, ...]:
        if dev in state.held:
            return (cur,)
        left = state.ops_left.get(dev)
        if left is not None:
            lo, hi = max(lo, cur - max(0, left)), min(hi, cur + max(0, left))
        return tuple(range(lo, hi + 1))

    # ------------------------------------------------------------------ scoring

    def _topology(self, devs: Sequence[_Device], disc: Sequence[int], state: VoltVarState) -> Topology:
        """The screening network of a point: its tap positions (banks are injections there)."""
        taps = {d.id: v for d, v in zip(devs, disc, strict=True) if d.kind is DeviceKind.TAP_CHANGER}
        return Topology.of(switch_states=state.switch_states, tap_pos=taps)

    def _cap_steps(self, devs: Sequence[_Device], disc: Sequence[int]) -> np.ndarray:
        steps = {d.id: v for d, v in zip(devs, disc, strict=True) if d.kind is DeviceKind.CAPACITOR}
        return np.array([steps.get(c.id, 0) for c in self._cap_list], dtype=float)

    def _scores(self, r: BatchResult, lp: np.ndarray, opt: VoltVarOptions, lim: Limits) -> tuple[np.ndarray, ...]:
        """(score, objective, hard violation) per scenario."""
        vm = r.vm_pu
        with np.errstate(invalid="ignore"):
            over = np.nan_to_num(np.maximum(vm - lim.vm_max_pu, 0.0))
            under = np.nan_to_num(np.maximum(lim.vm_min_pu - vm, 0.0))
            hard_v = over.sum(axis=1) + under.sum(axis=1)
            load = np.nan_to_num(np.maximum(r.line_loading_percent - lim.max_loading_percent, 0.0)).sum(axis=1)
            load += np.nan_to_num(np.maximum(r.transformer_loading_percent - lim.max_loading_percent, 0.0)).sum(axis=1)
            losses = np.asarray(r.losses_mw, dtype=float)
            if opt.objective is Objective.CVR:
                v_load = np.nan_to_num(vm[:, self._load_bus], nan=1.0)
                demand = (lp * np.power(np.maximum(v_load, 1e-3), opt.cvr_factor)).sum(axis=1)
                obj = demand + losses
                floor = lim.vm_min_pu + opt.cvr_margin_pu
                soft = np.nan_to_num(np.maximum(floor - vm[:, self._customer_bus], 0.0)).sum(axis=1)
            else:
                obj = losses
                soft = np.zeros(len(losses))
        score = obj + opt.voltage_penalty_mw_per_pu * (hard_v + soft) + opt.loading_penalty_mw_per_percent * load
        bad = ~np.asarray(r.converged, dtype=bool) | ~np.isfinite(score)
        score = np.where(bad, np.inf, score)
        return score, obj, hard_v + load

    def _evaluate(self, devs: Sequence[_Device], points: Sequence[_Point], state: VoltVarState,
                  lp: np.ndarray, lq: np.ndarray, opt: VoltVarOptions) -> np.ndarray:
        n = len(points)
        if n == 0:
            return np.empty(0)
        cap_q = np.stack([self._cap_steps(devs, pt.disc) * self._cap_q for pt in points]) if self._cap_list else None
        der_p = np.stack([pt.p for pt in points]) if self._ders else np.zeros((n, 0))
        der_q = np.stack([pt.q for pt in points]) if self._ders else np.zeros((n, 0))
        topologies = tuple(self._topology(devs, pt.disc, state) for pt in points)
        v2 = np.ones((n, len(self._cap_list)))
        passes = self._cap_passes if cap_q is not None and cap_q.any() else 1
        for _ in range(passes):
            q_inj = der_q if cap_q is None else np.hstack([der_q, cap_q * v2])
            p_inj = der_p if cap_q is None else np.hstack([der_p, np.zeros_like(cap_q)])
            sc = Scenarios(
                n,
                load_p_mw=np.broadcast_to(lp, (n, len(lp))),
                load_q_mvar=np.broadcast_to(lq, (n, len(lq))),
                der_p_mw=p_inj if p_inj.shape[1] else None,
                der_q_mvar=q_inj if q_inj.shape[1] else None,
                topologies=topologies,
            )
            r = self._bpf.solve(sc)
            if cap_q is not None:  # a bank's Q goes with V^2 (constant admittance)
                v2 = np.nan_to_num(r.vm_pu[:, self._cap_bus], nan=1.0) ** 2
        self.evaluations += n
        score, _, _ = self._scores(r, lp[None, :], opt, self.feeder.limits)
        for pt, sc_ in zip(points, score, strict=True):
            pt.score = float(sc_)
        return score

    # ------------------------------------------------------------------ search steps

    def _neighbours(self, dev: _Device, cur: int, opt: VoltVarOptions) -> list[int]:
        if len(dev.values) <= opt.full_range_max:
            return [v for v in dev.values if v != cur]
        allowed = set(dev.values)
        return [cur + s * k for k in (1, 2, 4, 8) for s in (-1, 1) if cur + s * k in allowed]

    def _single_moves(self, devs: Sequence[_Device], pt: _Point, opt: VoltVarOptions) -> list[_Point]:
        cands: list[_Point] = []
        for i, dev in enumerate(devs):
            for v in self._neighbours(dev, pt.disc[i], opt):
                disc = list(pt.disc)
                disc[i] = v
                cands.append(_Point(tuple(disc), pt.q, pt.p))
        return cands

    def _pair_moves(self, devs: Sequence[_Device], pt: _Point, opt: VoltVarOptions) -> list[_Point]:
        """Two devices at once: series tap changers (an OLTC and a regulator) and banks that trade
        their effect leave valleys where no single move gains."""
        cands: list[_Point] = []
        for i, j in itertools.combinations(range(len(devs)), 2):
            a, b = devs[i], devs[j]
            vi = self._neighbours(a, pt.disc[i], opt)
            vj = self._neighbours(b, pt.disc[j], opt)
            if a.kind is DeviceKind.TAP_CHANGER and b.kind is DeviceKind.TAP_CHANGER:  # each pair compiles a network
                vi = [v for v in vi if abs(v - pt.disc[i]) <= opt.pair_tap_steps]
                vj = [v for v in vj if abs(v - pt.disc[j]) <= opt.pair_tap_steps]
            for x in vi:
                for y in vj:
                    disc = list(pt.disc)
                    disc[i], disc[j] = x, y
                    cands.append(_Point(tuple(disc), pt.q, pt.p))
        return cands

    def _descend(self, devs: Sequence[_Device], pt: _Point, ctx: tuple, opt: VoltVarOptions) -> tuple[_Point, bool]:
        moved = False
        pairs = False
        for _ in range(opt.max_moves):
            cands = self._pair_moves(devs, pt, opt) if pairs else self._single_moves(devs, pt, opt)
            if not cands:
                break
            scores = self._evaluate(devs, cands, *ctx, opt)
            best = int(np.argmin(scores))
            if scores[best] < pt.score - opt.move_gain_mw:
                pt, moved, pairs = cands[best], True, False
            elif pairs or not opt.pair_moves:
                break
            else:  # stuck on single moves: try pairs once
                pairs = True
        return pt, moved

    def _q_limits(self, p: np.ndarray) -> np.ndarray:
        sn = np.array([d.sn_mva for d in self._ders], dtype=float)
        return np.sqrt(np.maximum(sn**2 - np.minimum(np.abs(p), sn) ** 2, 0.0))

    def _optimise_q(self, devs: Sequence[_Device], pt: _Point, ctx: tuple, opt: VoltVarOptions,
                    free: np.ndarray) -> tuple[_Point, bool]:
        if not self._ders or not free.any():
            return pt, False
        qmax = self._q_limits(pt.p) * free
        if not (qmax > 1e-9).any():
            return pt, False
        moved = False
        for _ in range(opt.q_iterations):
            h = np.maximum(0.02 * qmax, 1e-4) * (qmax > 1e-9)
            idx = np.flatnonzero(h)
            probes = []
            for i in idx:
                q = pt.q.copy()
                q[i] = q[i] + h[i] if q[i] + h[i] <= qmax[i] else q[i] - h[i]
                probes.append(_Point(pt.disc, q, pt.p))
            s = self._evaluate(devs, probes, *ctx, opt)
            grad = np.zeros(len(pt.q))
            for k, i in enumerate(idx):
                dq = probes[k].q[i] - pt.q[i]
                grad[i] = (s[k] - pt.score) / dq if np.isfinite(s[k]) else 0.0
            direction = -grad * qmax
            norm = np.abs(direction).max()
            if not norm > 0:
                break
            direction = direction / norm * qmax
            steps = [_Point(pt.disc, np.clip(pt.q + t * direction, -qmax, qmax), pt.p)
                     for t in (2.0, 1.0, 0.5, 0.25, 0.12, 0.06, 0.03, 0.01)]
            ss = self._evaluate(devs, steps, *ctx, opt)
            best = int(np.argmin(ss))
            if not ss[best] < pt.score - opt.move_gain_mw:
                break
            pt, moved = steps[best], True
        return pt, moved

    def _search(self, devs: Sequence[_Device], start: _Point, ctx: tuple, opt: VoltVarOptions,
                free_q: np.ndarray) -> _Point:
        self._evaluate(devs, [start], *ctx, opt)
        pt = start
        for _ in range(opt.max_rounds):
            pt, _ = self._descend(devs, pt, ctx, opt)
            q_moved = False
            if opt.use_der_q:
                pt, q_moved = self._optimise_q(devs, pt, ctx, opt, free_q)
            if not q_moved:  # the descent already converged at these Q
                break
        return pt

    # ------------------------------------------------------------------ validation

    def _validate(self, devs: Sequence[_Device], pt: _Point, state: VoltVarState, lp: np.ndarray,
                  lq: np.ndarray, opt: VoltVarOptions) -> tuple[Figures, PowerFlowResult]:
        loads = self.feeder.loads
        r = self._validator.solve(
            switch_states=state.switch_states,
            tap_pos={d.id: v for d, v in zip(devs, pt.disc, strict=True) if d.kind is DeviceKind.TAP_CHANGER},
            capacitor_step={d.id: v for d, v in zip(devs, pt.disc, strict=True) if d.kind is DeviceKind.CAPACITOR},
            load_p_mw={ld.id: float(v) for ld, v in zip(loads, lp, strict=True)},
            load_q_mvar={ld.id: float(v) for ld, v in zip(loads, lq, strict=True)},
            der_p_mw={d.id: float(v) for d, v in zip(self._ders, pt.p, strict=True)},
            der_q_mvar={d.id: float(v) for d, v in zip(self._ders, pt.q, strict=True)},
        )
        self.evaluations += 1
        if not r.converged:
            return Figures(False, math.nan, math.nan, math.nan, math.nan, math.inf, 0, False), r
        vm = np.array([b.vm_pu if b.vm_pu is not None else np.nan for b in r.buses], dtype=float)
        v_load = np.nan_to_num(vm[self._load_bus], nan=1.0)
        demand = float((lp * np.power(np.maximum(v_load, 1e-3), opt.cvr_factor)).sum())
        losses = float(r.losses_mw or 0.0)
        obj = demand + losses if opt.objective is Objective.CVR else losses
        normal = r.violations  # either band: each is outside the normal limits
        return Figures(True, losses, float(r.min_vm_pu or math.nan), float(r.max_vm_pu or math.nan), demand, obj,
                       len(normal), not normal), r

    # ------------------------------------------------------------------ public

    def _context(self, state: VoltVarState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lp = self._array([ld.id for ld in self.feeder.loads], self._load_p0, state.load_p_mw, "load")
        lq = self._array([ld.id for ld in self.feeder.loads], self._load_q0, state.load_q_mvar, "load")
        ids = [d.id for d in self._ders]
        p = self._array(ids, np.array([d.p_mw if d.in_service else 0.0 for d in self._ders], dtype=float),
                        state.der_p_mw, "DER")
        q = self._array(ids, np.array([d.q_mvar if d.in_service else 0.0 for d in self._ders], dtype=float),
                        state.der_q_mvar, "DER")
        return lp, lq, p, q

    def plan(self, state: VoltVarState | None = None, options: VoltVarOptions | None = None) -> VoltVarPlan:
        """The best settings for ``state`` under ``options``; see the module docstring."""
        t0 = time.perf_counter()
        state = state or VoltVarState()
        opt = options or VoltVarOptions()
        self.evaluations = 0
        devs = self._devices(state)
        lp, lq, p0, q0 = self._context(state)
        ctx = (state, lp, lq)
        free_q = np.array([d.in_service and d.id not in state.held for d in self._ders], dtype=bool)
        current = _Point(tuple(d.current for d in devs), q0.copy(), p0.copy())
        before, _ = self._validate(devs, current, state, lp, lq, opt)
        self._evaluate(devs, [current], *ctx, opt)
        starts = [current]
        if opt.restarts and devs:
            for extreme in (0, 1):
                disc = []
                for d in devs:
                    if d.kind is DeviceKind.TAP_CHANGER:
                        t = self._taps[d.id]
                        neutral = t.tap_neutral or 0
                        disc.append(min(d.values, key=lambda v, n=neutral: abs(v - n)))
                    else:
                        disc.append(d.values[-1] if extreme else d.values[0])
                starts.append(_Point(tuple(disc), q0.copy(), p0.copy()))
        best = current
        # The restarts look for the best discrete settings; DER Q (a finite-difference gradient of
        # one flow per DER, the costly part on a feeder with a hundred DERs) is then optimised once,
        # alternating with the descent, from the winner only.
        discrete = replace(opt, use_der_q=False) if len(starts) > 1 else opt
        for s in starts:
            found = self._search(devs, s, ctx, discrete, free_q)
            if found.score < best.score:
                best = found
        if discrete is not opt:
            best = self._search(devs, best, ctx, opt, free_q)
        reason: str | None = None
        after, _ = self._validate(devs, best, state, lp, lq, opt)
        if not after.feasible and opt.allow_curtailment and self._ders:
            best, curtailed = self._curtail(devs, best, ctx, opt, free_q, p0)
            after, _ = self._validate(devs, best, state, lp, lq, opt)
            if curtailed:
                reason = "DER curtailed as a last resort: no tap, capacitor or reactive power setting kept every limit"
        best = self._snap_q(devs, best, current, ctx, opt)
        after, _ = self._validate(devs, best, state, lp, lq, opt)
        gain = before.objective_mw - after.objective_mw
        if before.feasible and (gain < opt.min_gain_mw or not after.feasible):
            best, after = current, before
            reason = (f"within the deadband: the best plan gains {gain * 1000:.2f} kW "
                      f"(< {opt.min_gain_mw * 1000:.2f} kW); nothing to do")
        elif not after.feasible:
            reason = (reason + "; " if reason else "") + (
                f"no setting keeps every limit ({after.violations} violations remain in the best plan)")
        ops = self._operations(devs, current, best)
        held = tuple(sorted(h for h in state.held if h in {d.id for d in devs} or h in self._der_index))
        return VoltVarPlan(
            feeder_id=self.feeder.id, objective=opt.objective, operations=ops,
            tap_pos={d.id: v for d, v in zip(devs, best.disc, strict=True) if d.kind is DeviceKind.TAP_CHANGER},
            capacitor_step={d.id: v for d, v in zip(devs, best.disc, strict=True) if d.kind is DeviceKind.CAPACITOR},
            der_q_mvar={d.id: float(v) for d, v in zip(self._ders, best.q, strict=True)},
            der_p_mw={d.id: float(v) for d, v in zip(self._ders, best.p, strict=True)},
            before=before, after=after, reason=reason, held=held, evaluations=self.evaluations,
            plan_time_s=time.perf_counter() - t0,
        )

    def _curtail(self, devs: Sequence[_Device], pt: _Point, ctx: tuple, opt: VoltVarOptions, free: np.ndarray,
                 available: np.ndarray) -> tuple[_Point, bool]:
        curtailed = False
        lim = self.feeder.limits
        for _ in range(opt.max_curtail_steps):
            cands = []
            for i in np.flatnonzero(free & (pt.p > 1e-9)):
                p = pt.p.copy()
                p[i] = max(0.0, p[i] - opt.curtail_step * available[i])
                q = np.clip(pt.q, -self._q_limits(p), self._q_limits(p))
                cands.append(_Point(pt.disc, q, p))
            if not cands:
                break
            s = self._evaluate(devs, cands, *ctx, opt)
            k = int(np.argmin(s))
            if not s[k] < pt.score - opt.move_gain_mw:
                break
            pt, curtailed = cands[k], True
            if opt.use_der_q:
                pt, _ = self._optimise_q(devs, pt, ctx, opt, free)
            fig, _ = self._validate(devs, pt, ctx[0], ctx[1], ctx[2], opt)
            if fig.feasible:
                break
        del lim
        return pt, curtailed

    def _snap_q(self, devs: Sequence[_Device], pt: _Point, current: _Point, ctx: tuple,
                opt: VoltVarOptions) -> _Point:
        """DER Q changes inside the deadband are not sent: keep the present value there."""
        if not self._ders:
            return pt
        small = np.abs(pt.q - current.q) < opt.q_deadband_mvar
        if not small.any():
            return pt
        snapped = _Point(pt.disc, np.where(small, current.q, pt.q), pt.p)
        self._evaluate(devs, [snapped], *ctx, opt)
        return snapped

    def _operations(self, devs: Sequence[_Device], cur: _Point, best: _Point) -> tuple[Operation, ...]:
        ops: list[Operation] = []
        for d, a, b in zip(devs, cur.disc, best.disc, strict=True):
            if a != b:
                action = (VoltVarAction.SET_TAP_POSITION if d.kind is DeviceKind.TAP_CHANGER
                          else VoltVarAction.SET_CAPACITOR_STEP)
                ops.append(Operation(d.id, d.kind, action, float(b), float(a)))
        for i, d in enumerate(self._ders):
            if best.p[i] < cur.p[i] - 1e-9:
                ops.append(Operation(d.id, DeviceKind.DER, VoltVarAction.CURTAIL_DER_P, float(best.p[i]),
                                     float(cur.p[i])))
            if abs(best.q[i] - cur.q[i]) > 1e-12:
                ops.append(Operation(d.id, DeviceKind.DER, VoltVarAction.SET_DER_Q, float(best.q[i]),
                                     float(cur.q[i])))
        # Taps before capacitors, DER last: the slow wear-limited devices set the level first.
        order = {VoltVarAction.SET_TAP_POSITION: 0, VoltVarAction.SET_CAPACITOR_STEP: 1,
                 VoltVarAction.CURTAIL_DER_P: 2, VoltVarAction.SET_DER_Q: 3}
        return tuple(sorted(ops, key=lambda o: (order[o.action], o.device_id)))

    def exhaustive(self, state: VoltVarState | None = None, options: VoltVarOptions | None = None,
                   *, batch: int = 256) -> tuple[dict[str, int], Figures, int]:
        """Every combination of the free discrete devices (DER P and Q held at the state's values):
        the best settings (device -> position), their validated figures and how many were tried."""
        state = state or VoltVarState()
        opt = options or VoltVarOptions()
        devs = self._devices(state)
        lp, lq, p0, q0 = self._context(state)
        ctx = (state, lp, lq)
        best: _Point | None = None
        count = 0
        combos = itertools.product(*(d.values for d in devs))
        while True:
            chunk = [_Point(tuple(c), q0, p0) for c in itertools.islice(combos, batch)]
            if not chunk:
                break
            count += len(chunk)
            s = self._evaluate(devs, chunk, *ctx, opt)
            k = int(np.argmin(s))
            if best is None or s[k] < best.score:
                best = chunk[k]
        assert best is not None
        fig, _ = self._validate(devs, best, state, lp, lq, opt)
        return {d.id: v for d, v in zip(devs, best.disc, strict=True)}, fig, count


def plan_voltvar(feeder: Feeder, state: VoltVarState | None = None,
                 options: VoltVarOptions | None = None) -> VoltVarPlan:
    """One plan on a fresh :class:`VoltVarPlanner` (reuse a planner to keep its compiled networks)."""
    return VoltVarPlanner(feeder).plan(state, options)


def check_setpoint(feeder: Feeder, device_id: str, action: VoltVarAction | str, value: float) -> int:
    """A tap position or capacitor step an operator or an application asks for, checked against the
    device's range before anything is sent: returns the integer position, raises ``BadInput`` naming
    the limit, ``NotFound`` for an unknown device."""
    action = VoltVarAction(action)
    if action not in (VoltVarAction.SET_TAP_POSITION, VoltVarAction.SET_CAPACITOR_STEP):
        raise BadInput(f"{action} is not a tap or capacitor setting; DER set points go through the DER path",
                       element_id=device_id)
    if not math.isfinite(value) or value != int(value):
        raise BadInput(f"{device_id}: {action} needs a whole number, not {value!r}", element_id=device_id)
    pos = int(value)
    if action is VoltVarAction.SET_TAP_POSITION:
        for t in feeder.transformers:
            if t.id == device_id:
                if not t.has_tap_changer:
                    raise BadInput(f"transformer {device_id!r} has no tap changer; nothing was sent",
                                   element_id=device_id)
                assert t.tap_min is not None and t.tap_max is not None
                if not t.tap_min <= pos <= t.tap_max:
                    raise BadInput(f"tap position {pos} is beyond the range of {device_id!r} (tap_min={t.tap_min}, "
                                   f"tap_max={t.tap_max}); nothing was sent", element_id=device_id)
                return pos
        raise NotFound(f"tap changer {device_id!r} is not in feeder {feeder.id!r}; check the id", element_id=device_id)
    if action is VoltVarAction.SET_CAPACITOR_STEP:
        for c in feeder.capacitors:
            if c.id == device_id:
                if not 0 <= pos <= c.steps:
                    raise BadInput(f"capacitor step {pos} does not exist on {device_id!r} (steps 0..{c.steps}); "
                                   "nothing was sent", element_id=device_id)
                return pos
        raise NotFound(f"capacitor {device_id!r} is not in feeder {feeder.id!r}; check the id", element_id=device_id)
    raise BadInput(f"{action} is not a tap or capacitor setting; DER set points go through the DER path",
                   element_id=device_id)
