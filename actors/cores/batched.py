"""Batched scenario engine: many balanced power flows on one feeder at once, as a pure core.

N-1, hosting capacity and Monte Carlo studies solve thousands of operating states of the same
feeder. A pandapower loop pays its whole set-up (pandas tables -> ppc -> Ybus -> Newton-Raphson ->
pandas results) for every one; this engine pays it once per *network* and then solves all the
scenarios on that network together with dense numpy arrays of shape (buses, scenarios).

Method (current-injection fixed point, "Z-bus" iteration):

* The network of a :class:`Topology` (switch states, out-of-service elements, tap positions,
  capacitor steps) is compiled once: :class:`~actors.cores.powerflow.PowerFlowModel` applies the
  topology to its pandapower net and runs ``runpp`` once with every load and DER at zero; the
  engine then takes pandapower's own internal model of that run (``net._ppc["internal"]``: bus
  admittance matrix ``Ybus``, branch matrices ``Yf``/``Yt``, slack buses, bus lookups). So the
  engine and pandapower see exactly the same network: line charging, transformer impedance,
  magnetizing branch and tap ratio, shunts (capacitors), bus-bus switches fused, open line switches
  as pandapower's auxiliary buses, unsupplied islands removed.
* With the slack (``ext_grid``) voltages ``V_r`` fixed, the other buses satisfy
  ``Y_nn V_n = conj(S_n / V_n) - Y_nr V_r``. ``Y_nn`` is factored once (sparse LU, SuperLU) and
  every iteration solves all scenarios as one matrix right-hand side::

      V_n(k+1) = Y_nn^-1 (conj(S_n / V_n(k)) - Y_nr V_r)

  Loads and DER are constant power, as in pandapower. The power mismatch after a step is known
  without another product with ``Y``: ``S (V(k+1) / V(k) - 1)``; a scenario has converged when its
  largest bus mismatch is below ``tolerance_mva`` (default 1e-9 MVA, ten times tighter than
  pandapower's Newton-Raphson), so both agree well within 1e-6 pu. The iteration converges
  linearly and fast on radial and weakly meshed distribution feeders (6-15 iterations on the
  shipped feeders under random loads of 0.3-1.6 x nominal); converged scenarios leave the active
  set. Each iteration is one sparse triangular solve pair with all scenarios as columns,
  level-scheduled (see :class:`_LevelSolver`).
* Results per scenario (rows) and element (columns), in the feeder's order: ``vm_pu`` and
  ``va_degree`` per bus (NaN where de-energized), line current and loading with pandapower's
  semantics (``max(i_from, i_to) / (max_i_ka * df * parallel)``), transformer loading (rated
  current), source P/Q, and losses of lines and transformers from the power balance (sources +
  DER - loads - shunt conductance: pandapower's sum of ``pl_mw`` within the mismatch tolerance).

Fallback to pandapower (one ``PowerFlowModel.solve`` per scenario, ``engine="pandapower-fallback"``
and the reason in ``reason``):

* a scenario that does not converge within ``max_iterations`` (heavy load near voltage collapse,
  where a fixed point converges slowly or not at all but Newton-Raphson may still find the
  solution); when pandapower fails too, the scenario is ``converged=False``, never an exception;
* a topology the engine cannot compile: no source in service, voltage-controlled (PV) buses, a
  singular ``Y_nn`` or a failed zero-load solve.

``fallback=False`` turns this off (a non-converged scenario is then reported ``converged=False``
by the batched engine). Scenarios are grouped by topology; each distinct topology costs one
zero-load pandapower solve and one LU factorization (about one ``runpp``), kept in a cache of
``max_topologies`` networks (oldest dropped first). The compile step reads pandapower internals
(``PowerFlowModel._net``, ``net._ppc``, ``net._pd2ppc_lookups``) of pandapower 3.5; the tests
compare every result with pandapower, so a change there shows up as a failing test.

GPU: the iteration is array code (a sparse triangular solve with many right-hand sides plus
elementwise complex arithmetic), so the same loop runs on a GPU by swapping the array module
(``cupy`` with ``cupyx.scipy.sparse.linalg.splu``/``spsolve_triangular``, or ``torch`` with a
dense or sparse LU of ``Y_nn``). Neither cupy nor torch is installed here, so that path is not
implemented and not measured; :data:`ARRAY_BACKEND` says what ran.

The feeder is never mutated; results are frozen dataclasses holding read-only numpy arrays.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from actors.cores.powerflow import NOISE_I_KA, PowerFlowModel, PowerFlowResult
from graph_schema.errors import BadInput
from graph_schema.model import Feeder
from graph_schema.quiet import quiet_warnings

Engine = Literal["batched", "pandapower-fallback"]

ARRAY_BACKEND = "numpy/scipy (CPU)"

_SQRT3 = math.sqrt(3.0)
_MIN_VM_PU = 0.2  # an iterate below this is diverging: stop it early


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class Topology:
    """The network-changing part of a scenario, with the meaning of ``PowerFlowModel.solve``'s
    ``switch_states`` (id -> is_open), ``out_of_service``, ``tap_pos`` and ``capacitor_step``.
    Hashable: scenarios are grouped by it. Build it with :meth:`of`."""

    switch_states: tuple[tuple[str, bool], ...] = ()
    out_of_service: frozenset[str] = frozenset()
    tap_pos: tuple[tuple[str, int], ...] = ()
    capacitor_step: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(
        cls,
        *,
        switch_states: Mapping[str, bool] | None = None,
        out_of_service: Iterable[str] = (),
        tap_pos: Mapping[str, int] | None = None,
        capacitor_step: Mapping[str, int] | None = None,
    ) -> Topology:
        return cls(
            tuple(sorted((k, bool(v)) for k, v in (switch_states or {}).items())),
            frozenset(out_of_service),
            tuple(sorted((k, int(v)) for k, v in (tap_pos or {}).items())),
            tuple(sorted((k, int(v)) for k, v in (capacitor_step or {}).items())),
        )

    def solve_kwargs(self) -> dict[str, Any]:
        return {
            "switch_states": dict(self.switch_states),
            "out_of_service": tuple(sorted(self.out_of_service)),
            "tap_pos": dict(self.tap_pos),
            "capacitor_step": dict(self.capacitor_step),
        }


BASE_TOPOLOGY = Topology()


@dataclass(frozen=True, slots=True)
class Scenarios:
    """``count`` operating states of one feeder, as arrays.

    Columns of the per-load arrays follow ``feeder.loads``, of the per-DER arrays ``feeder.ders``;
    ``None`` keeps the feeder's own values. As in ``PowerFlowModel.solve``, ``load_scale`` (one
    factor per scenario) multiplies each load's p and q after the overrides. ``topologies`` gives
    one :class:`Topology` per scenario (``None``: the feeder as it is).
    """

    count: int
    load_p_mw: np.ndarray | None = None
    load_q_mvar: np.ndarray | None = None
    der_p_mw: np.ndarray | None = None
    der_q_mvar: np.ndarray | None = None
    load_scale: np.ndarray | None = None
    topologies: tuple[Topology, ...] | None = None


# ------------------------------------------------------------------ results


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Results of a batch: row ``s`` is scenario ``s``; columns follow the id tuples.

    ``vm_pu``/``va_degree`` are NaN where a bus is de-energized and on every row that did not
    converge; flows of lines and transformers without flow are 0. ``iterations`` counts fixed-point
    steps (0 for a scenario pandapower solved). ``engine[s]`` says who solved scenario ``s`` and
    ``reason[s]`` why pandapower did, or why it failed.
    """

    feeder_id: str
    bus_ids: tuple[str, ...]
    line_ids: tuple[str, ...]
    transformer_ids: tuple[str, ...]
    vm_pu: np.ndarray
    va_degree: np.ndarray
    line_i_ka: np.ndarray
    line_loading_percent: np.ndarray
    transformer_loading_percent: np.ndarray
    losses_mw: np.ndarray
    p_source_mw: np.ndarray
    q_source_mvar: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    engine: tuple[Engine, ...]
    reason: tuple[str | None, ...]
    topology_groups: int
    solve_time_s: float
    backend: str = ARRAY_BACKEND

    @property
    def count(self) -> int:
        return len(self.engine)

    @property
    def min_vm_pu(self) -> np.ndarray:
        """Lowest energized bus voltage per scenario (NaN when none is energized or not converged)."""
        return _nan_reduce(np.fmin.reduce, self.vm_pu)

    @property
    def max_vm_pu(self) -> np.ndarray:
        return _nan_reduce(np.fmax.reduce, self.vm_pu)

    @property
    def max_line_loading_percent(self) -> np.ndarray:
        if self.line_loading_percent.shape[1] == 0:
            return np.zeros(self.count)
        return self.line_loading_percent.max(axis=1)

    @property
    def fallback_indices(self) -> np.ndarray:
        return np.flatnonzero(np.array([e != "batched" for e in self.engine], dtype=bool))


def _nan_reduce(reduce: Any, a: np.ndarray) -> np.ndarray:
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    return np.asarray(reduce(a, axis=1), dtype=float)


@dataclass
class _Rows:
    """Mutable result buffers for one batch."""

    vm: np.ndarray
    va: np.ndarray
    line_i: np.ndarray
    line_loading: np.ndarray
    trafo_loading: np.ndarray
    losses: np.ndarray
    p_src: np.ndarray
    q_src: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    engine: list[Engine]
    reason: list[str | None]

    @classmethod
    def empty(cls, s: int, nb: int, nl: int, nt: int) -> _Rows:
        return cls(
            np.full((s, nb), np.nan),
            np.full((s, nb), np.nan),
            np.zeros((s, nl)),
            np.zeros((s, nl)),
            np.zeros((s, nt)),
            np.full(s, np.nan),
            np.full(s, np.nan),
            np.full(s, np.nan),
            np.zeros(s, dtype=bool),
            np.zeros(s, dtype=np.int64),
            ["batched"] * s,
            [None] * s,
        )


# ------------------------------------------------------------------ sparse solves, many right-hand sides


def _levels(strict: sp.csr_matrix, order: range) -> np.ndarray:
    """Level of each row of a strictly triangular matrix: 1 + the deepest row it depends on."""
    lev = np.zeros(strict.shape[0], dtype=np.int64)
    ip, ix = strict.indptr, strict.indices
    for i in order:
        a, b = ip[i], ip[i + 1]
        if b > a:
            lev[i] = lev[ix[a:b]].max() + 1
    return lev


def _blocks(strict: sp.csr_matrix, lev: np.ndarray) -> list[tuple[np.ndarray, sp.csr_matrix]]:
    out = []
    for level in range(1, int(lev.max(initial=0)) + 1):
        rows = np.flatnonzero(lev == level)
        out.append((rows, strict[rows]))
    return out


def _dissection_order(a: sp.spmatrix) -> np.ndarray:
    """An elimination order with a shallow elimination tree: nested dissection by single vertices.

    Each connected part loses its *centroid* (of a BFS spanning tree: no branch left of more than
    half the part), which is ordered after everything it separates; the pieces recurse. On a
    radial feeder the centroid splits the tree, so the elimination tree is about ``log2(n)`` deep
    (and the fill is small: an eliminated vertex joins only the separators above it); on a meshed
    part the order is still valid, just less balanced. A triangular solve costs one sparse product
    per level, so the depth, not the fill, is what a few-scenario solve pays for."""
    g = sp.csr_matrix(abs(a) + abs(a.T))
    g.setdiag(0)
    g.eliminate_zeros()
    ip, ix = g.indptr, g.indices
    n = g.shape[0]
    alive = np.ones(n, dtype=bool)
    seen = np.zeros(n, dtype=bool)

    def part_of(start: int) -> tuple[list[int], dict[int, int]]:
        """The alive vertices connected to ``start`` (marked seen), in BFS order, with parents."""
        comp, parent = [start], {start: -1}
        seen[start] = True
        k = 0
        while k < len(comp):
            u = comp[k]
            k += 1
            for v in ix[ip[u]:ip[u + 1]].tolist():
                if alive[v] and not seen[v]:
                    seen[v] = True
                    parent[v] = u
                    comp.append(v)
        return comp, parent

    stack = [part_of(v) for v in range(n) if not seen[v]]
    seen[:] = False
    rev: list[int] = []  # separators first: the elimination order reversed
    while stack:
        comp, parent = stack.pop()
        if len(comp) <= 2:
            rev.extend(comp)
            alive[comp] = False
            continue
        size = dict.fromkeys(comp, 1)
        children: dict[int, list[int]] = {}
        for u in reversed(comp[1:]):
            size[parent[u]] += size[u]
            children.setdefault(parent[u], []).append(u)
        c, half = comp[0], len(comp) / 2
        while (heavy := next((w for w in children.get(c, ()) if size[w] > half), None)) is not None:
            c = heavy
        rev.append(c)
        alive[c] = False
        new = [part_of(v) for v in ix[ip[c]:ip[c + 1]].tolist() if alive[v] and not seen[v]]
        for part, _ in new:
            seen[part] = False
        stack.extend(new)
    return np.asarray(rev[::-1], dtype=np.int64)


class _Factors(NamedTuple):
    """One LU of ``A`` in the form :class:`_LevelSolver` solves with."""

    perm_r: np.ndarray
    perm_c: np.ndarray
    inv_diag: np.ndarray
    lower: list[tuple[np.ndarray, sp.csr_matrix]]
    upper_first: np.ndarray
    upper: list[tuple[np.ndarray, sp.csr_matrix]]
    nnz: int

    @property
    def depth(self) -> int:  # levels of both triangular solves: one sparse product each
        return len(self.lower) + len(self.upper)


class _LevelSolver:
    """``A x = B`` for many right-hand sides with a sparse LU of ``A`` (SuperLU, kept in this
    module because SuperLU's own multi-column solve costs milliseconds per column here).

    ``Pr A Pc = L U``; the triangular solves run level by level: the rows of one level depend only
    on earlier levels, so each level is one sparse-times-dense product over every scenario, and
    the Python overhead is one product per level. The order of elimination decides the levels:
    SuperLU's minimum degree (``MMD_AT_PLUS_A``) leaves about the depth of the feeder (83 levels
    each way on the 1,000-bus synthetic feeder, 36 on the 2,940-bus Schutterwald grid); nested
    dissection (:func:`_dissection_order`) about ``log2(n)`` on a radial feeder. Both are
    factored and the one with fewer levels is kept unless its factors are much larger.
    """

    def __init__(self, a: sp.csc_matrix) -> None:
        self.n = a.shape[0]
        best = self._factor(a, nested=False)  # its RuntimeError (a zero pivot) is the caller's
        assert best is not None  # minimum degree keeps SuperLU's own order
        try:
            nested = self._factor(a, nested=True)
        except RuntimeError:
            nested = None
        if nested is not None and nested.depth < best.depth and nested.nnz <= 2 * best.nnz:
            best = nested
        self.perm_r: np.ndarray | None = best.perm_r
        self.perm_c: np.ndarray | None = best.perm_c
        self.inv_diag, self.lower, self.upper_first, self.upper = (
            best.inv_diag, best.lower, best.upper_first, best.upper)

    @staticmethod
    def _factor(a: sp.csc_matrix, nested: bool) -> _Factors | None:
        """The factors in solve form, or None when nested dissection could not keep its order
        (SuperLU pivoted off the diagonal)."""
        n = a.shape[0]
        if nested:
            order = _dissection_order(a)
            lu = splu(sp.csc_matrix(a[order][:, order]), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                      options={"SymmetricMode": True})
            if not (np.array_equal(lu.perm_r, np.arange(n)) and np.array_equal(lu.perm_c, np.arange(n))):
                return None
            perm_r = perm_c = np.argsort(order)
        else:
            lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            perm_r = np.asarray(lu.perm_r, dtype=np.int64)
            perm_c = np.asarray(lu.perm_c, dtype=np.int64)
        low = sp.tril(lu.L.tocsr(), -1).tocsr()
        up = lu.U.tocsr()
        diag = up.diagonal()
        if np.any(diag == 0) or not np.all(np.isfinite(diag)):
            raise RuntimeError("zero pivot")
        strict_up = sp.triu(up, 1).tocsr()
        u_lev = _levels(strict_up, range(n - 1, -1, -1))
        return _Factors(perm_r, perm_c, (1.0 / diag)[:, None], _blocks(low, _levels(low, range(n))),
                        np.flatnonzero(u_lev == 0), _blocks(strict_up, u_lev), low.nnz + up.nnz)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``x`` of shape ``b.shape`` ((n,) or (n, k))."""
        vec = b.ndim == 1
        bb = b[:, None] if vec else b
        if self.perm_r is None:
            y = np.array(bb, dtype=np.result_type(bb.dtype, complex), copy=True)
        else:
            y = np.empty(bb.shape, dtype=np.result_type(bb.dtype, complex))
            y[self.perm_r] = bb
        for rows, block in self.lower:
            y[rows] -= block @ y
        y[self.upper_first] *= self.inv_diag[self.upper_first]
        for rows, block in self.upper:
            y[rows] = (y[rows] - block @ y) * self.inv_diag[rows]
        x = y if self.perm_c is None else y[self.perm_c]
        return x[:, 0] if vec else x

    def absorb_symmetric_permutation(self) -> np.ndarray | None:
        """When ``Pr = Pc^T`` (diagonal pivots), the order of unknowns that makes the permutations
        the identity, so that callers keep their vectors in factor order and each solve skips two
        scatters; None otherwise."""
        if self.perm_r is None or self.perm_c is None or not np.array_equal(self.perm_r, self.perm_c):
            return None
        order = np.argsort(self.perm_r)
        self.perm_r = self.perm_c = None
        return order


# ------------------------------------------------------------------ compiled network


@dataclass(frozen=True)
class _Network:
    """One topology compiled from pandapower's internal model (ppci indices)."""

    base_mva: float
    ref: np.ndarray  # ppci indices of slack buses
    nonref: np.ndarray
    lu: _LevelSolver | None  # LU of Y_nn
    i_const: np.ndarray  # -Y_nr V_r, shape (n_nonref,)
    v_noload: np.ndarray  # Y_nn^-1 i_const: the first iterate
    v_ref: np.ndarray
    y_r: sp.csr_matrix  # rows of Ybus at the slack buses
    load_map: sp.csr_matrix  # (n_ppci, n_loads): 1 where an in-service load sits
    der_map: sp.csr_matrix
    bus_pos: np.ndarray  # feeder bus -> ppci index, -1 when de-energized
    line_rows: np.ndarray  # feeder lines with a ppci branch
    line_yf: sp.csr_matrix
    line_yt: sp.csr_matrix
    line_f: np.ndarray
    line_t: np.ndarray
    line_kv_f: np.ndarray
    line_kv_t: np.ndarray
    line_i_max_ka: np.ndarray
    trafo_rows: np.ndarray
    trafo_yf: sp.csr_matrix
    trafo_yt: sp.csr_matrix
    trafo_f: np.ndarray
    trafo_t: np.ndarray
    trafo_kv_f: np.ndarray
    trafo_kv_t: np.ndarray
    trafo_vn_kv: np.ndarray  # (n, 2): rated hv, lv
    trafo_sn_mva: np.ndarray
    shunt_rows: np.ndarray  # ppci buses with a shunt conductance
    shunt_g: np.ndarray  # its conductance, per unit
    n: int = field(default=0)


def _compile(net: Any, n_loads: int, n_ders: int) -> _Network | str:
    """The compiled network of ``net`` right after a ``runpp``, or why it cannot be compiled."""
    from pandapower.pypower.idx_brch import F_BUS, T_BUS
    from pandapower.pypower.idx_bus import BASE_KV, GS

    internal = net._ppc["internal"]
    if len(internal["pv"]):
        return "the network has voltage-controlled (PV) buses, which the fixed-point iteration does not model"
    ybus = sp.csr_matrix(internal["Ybus"])
    n = ybus.shape[0]
    ref = np.asarray(internal["ref"], dtype=np.int64)
    nonref = np.setdiff1d(np.arange(n), ref)
    v = np.asarray(internal["V"], dtype=complex)
    v_ref = v[ref]
    ynn = ybus[nonref][:, nonref].tocsc()
    ynr = ybus[nonref][:, ref]
    try:
        lu = _LevelSolver(ynn) if len(nonref) else None
    except RuntimeError as exc:
        return f"the reduced admittance matrix cannot be factored ({exc})"
    i_const = np.asarray(-(ynr @ v_ref), dtype=complex)
    order = lu.absorb_symmetric_permutation() if lu is not None else None
    if order is not None:  # keep the non-slack buses in factor order from here on
        nonref, i_const, ynn = nonref[order], i_const[order], ynn[order][:, order]
    v_noload = lu.solve(i_const) if lu is not None else np.zeros(0, dtype=complex)
    residual = np.abs(ynn @ v_noload - i_const).max(initial=0.0)
    if not np.all(np.isfinite(v_noload)) or residual > 1e-9 * max(1.0, np.abs(i_const).max(initial=0.0)):
        return f"the reduced admittance matrix is numerically singular (residual {residual:.3g})"

    lookup = net._pd2ppc_lookups["bus"]
    pd_bus = np.asarray(net.bus.index, dtype=np.int64)
    pos = np.asarray(lookup[pd_bus], dtype=np.int64)
    bus_pos = np.where((pos >= 0) & (pos < n), pos, -1)
    row_of_pd = {int(b): i for i, b in enumerate(pd_bus)}

    def element_map(table: str, count: int) -> sp.csr_matrix:
        df = net[table]
        rows: list[int] = []
        cols: list[int] = []
        for k, (b, on) in enumerate(zip(df["bus"].to_numpy(), df["in_service"].to_numpy(), strict=True)):
            p = bus_pos[row_of_pd[int(b)]]
            if bool(on) and p >= 0:
                rows.append(int(p))
                cols.append(k)
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, count))

    load_map = element_map("load", n_loads) if n_loads else sp.csr_matrix((n, 0))
    der_map = element_map("sgen", n_ders) if n_ders else sp.csr_matrix((n, 0))

    branch_is = np.asarray(internal["branch_is"], dtype=bool)
    ppci_row = np.cumsum(branch_is) - 1  # ppc branch -> ppci branch row
    yf = sp.csr_matrix(internal["Yf"])
    yt = sp.csr_matrix(internal["Yt"])
    br = internal["branch"]
    base_kv = np.real(internal["bus"][:, BASE_KV])
    gs = np.real(internal["bus"][:, GS]) / float(internal["baseMVA"])
    lookups = net._pd2ppc_lookups["branch"]

    def branches(name: str, count: int) -> tuple[np.ndarray, ...]:
        if name not in lookups or count == 0:
            e = np.zeros(0, dtype=np.int64)
            return e, sp.csr_matrix((0, n), dtype=complex), sp.csr_matrix((0, n), dtype=complex), e, e
        f, t = lookups[name]
        ok = branch_is[f:t]
        rows = np.flatnonzero(ok)
        ppci = ppci_row[f:t][ok]
        fb = np.real(br[ppci, F_BUS]).astype(np.int64)
        tb = np.real(br[ppci, T_BUS]).astype(np.int64)
        return rows, yf[ppci], yt[ppci], fb, tb

    l_rows, l_yf, l_yt, l_f, l_t = branches("line", len(net.line))
    line = net.line
    i_max = (line["max_i_ka"].to_numpy(float) * line["df"].to_numpy(float) * line["parallel"].to_numpy(float))
    t_rows, t_yf, t_yt, t_f, t_t = branches("trafo", len(net.trafo))
    trafo = net.trafo
    return _Network(
        base_mva=float(internal["baseMVA"]),
        ref=ref,
        nonref=nonref,
        lu=lu,
        i_const=i_const,
        v_noload=v_noload,
        v_ref=v_ref,
        y_r=ybus[ref],
        load_map=load_map,
        der_map=der_map,
        bus_pos=bus_pos,
        line_rows=l_rows,
        line_yf=l_yf,
        line_yt=l_yt,
        line_f=l_f,
        line_t=l_t,
        line_kv_f=base_kv[l_f],
        line_kv_t=base_kv[l_t],
        line_i_max_ka=i_max[l_rows],
        trafo_rows=t_rows,
        trafo_yf=t_yf,
        trafo_yt=t_yt,
        trafo_f=t_f,
        trafo_t=t_t,
        trafo_kv_f=base_kv[t_f],
        trafo_kv_t=base_kv[t_t],
        trafo_vn_kv=np.column_stack(
            [trafo["vn_hv_kv"].to_numpy(float), trafo["vn_lv_kv"].to_numpy(float)]
        )[t_rows] if len(trafo) else np.zeros((0, 2)),
        trafo_sn_mva=trafo["sn_mva"].to_numpy(float)[t_rows] if len(trafo) else np.zeros(0),
        shunt_rows=np.flatnonzero(gs),
        shunt_g=gs[gs != 0],
        n=n,
    )


# ------------------------------------------------------------------ engine


class BatchedPowerFlow:
    """Solves batches of scenarios of one feeder; see the module docstring.

    ``tolerance_mva``: largest bus power mismatch accepted. ``max_iterations``: fixed-point steps
    before a scenario is handed to pandapower (``fallback=True``) or reported not converged.
    ``chunk_size``: scenarios solved together (bounds the working memory at about 16 bytes x buses
    x chunk per array; the results themselves are dense, 8 bytes x scenarios x elements per array).
    ``max_topologies``: compiled networks kept.
    """

    def __init__(
        self,
        feeder: Feeder,
        *,
        tolerance_mva: float = 1e-9,
        max_iterations: int = 60,
        fallback: bool = True,
        chunk_size: int = 512,
        max_topologies: int = 256,
    ) -> None:
        if tolerance_mva <= 0 or max_iterations < 1 or chunk_size < 1:
            raise BadInput(
                f"tolerance_mva={tolerance_mva}, max_iterations={max_iterations}, chunk_size={chunk_size}: "
                "each must be positive"
            )
        self.feeder = feeder
        self.model = PowerFlowModel(feeder)
        self.tolerance_mva = tolerance_mva
        self.max_iterations = max_iterations
        self.fallback = fallback
        self.chunk_size = chunk_size
        self.max_topologies = max(1, max_topologies)
        self._lock = threading.Lock()
        self.bus_ids = tuple(b.id for b in feeder.buses)
        self.line_ids = tuple(ln.id for ln in feeder.lines)
        self.transformer_ids = tuple(t.id for t in feeder.transformers)
        self.load_ids = tuple(ld.id for ld in feeder.loads)
        self.der_ids = tuple(d.id for d in feeder.ders)
        self._load_p = np.array([ld.p_mw for ld in feeder.loads], dtype=float)
        self._load_q = np.array([ld.q_mvar for ld in feeder.loads], dtype=float)
        self._der_p = np.array([d.p_mw for d in feeder.ders], dtype=float)
        self._der_q = np.array([d.q_mvar for d in feeder.ders], dtype=float)
        self._networks: dict[Topology, _Network | str] = {}

    # -------------------------------------------------------------- inputs

    def _column_block(self, arr: np.ndarray | None, base: np.ndarray, count: int, what: str) -> np.ndarray:
        if arr is None:
            return np.broadcast_to(base, (count, len(base)))
        a = np.asarray(arr, dtype=float)
        if a.shape != (count, len(base)):
            raise BadInput(f"{what} has shape {a.shape}; expected (scenarios, {len(base)}) = ({count}, {len(base)})")
        if not np.all(np.isfinite(a)):
            raise BadInput(f"{what} has NaN or infinite values; give a finite value for every element")
        return a

    def _injections(self, sc: Scenarios) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = sc.count
        lp = self._column_block(sc.load_p_mw, self._load_p, s, "load_p_mw")
        lq = self._column_block(sc.load_q_mvar, self._load_q, s, "load_q_mvar")
        if sc.load_scale is not None:
            scale = np.asarray(sc.load_scale, dtype=float)
            if scale.shape != (s,) or not np.all(np.isfinite(scale)):
                raise BadInput(f"load_scale has shape {scale.shape}; expected ({s},) finite factors")
            lp = lp * scale[:, None]
            lq = lq * scale[:, None]
        dp = self._column_block(sc.der_p_mw, self._der_p, s, "der_p_mw")
        dq = self._column_block(sc.der_q_mvar, self._der_q, s, "der_q_mvar")
        return lp, lq, dp, dq

    # -------------------------------------------------------------- solve

    def solve(self, scenarios: Scenarios) -> BatchResult:
        """Solve every scenario; never raises for a solver failure (``BadInput``/``NotFound`` for
        malformed input or unknown ids)."""
        with self._lock:
            return self._solve(scenarios)

    def prepare(self, topology: Topology = BASE_TOPOLOGY) -> str | None:
        """Compile ``topology`` now (one zero-load pandapower solve and one LU, then cached): None
        when the batched engine handles it, else the reason its scenarios will go to pandapower."""
        with self._lock:
            net = self._network(topology)
        return net if isinstance(net, str) else None

    def _network(self, topo: Topology) -> _Network | str:
        cached = self._networks.get(topo)
        if cached is not None:
            return cached
        kwargs = topo.solve_kwargs()
        zeros = dict.fromkeys(self.der_ids, 0.0)
        r = self.model.solve(load_scale=0.0, der_p_mw=zeros, der_q_mvar=zeros, **kwargs)
        if r.reason is not None and r.converged:
            compiled: _Network | str = r.reason
        elif not r.converged:
            compiled = f"the zero-load power flow of this topology failed: {r.reason}"
        else:
            with quiet_warnings():
                compiled = _compile(self.model._net, len(self.load_ids), len(self.der_ids))
        while len(self._networks) >= self.max_topologies:
            self._networks.pop(next(iter(self._networks)))
        self._networks[topo] = compiled
        return compiled

    def _solve(self, sc: Scenarios) -> BatchResult:
        t0 = time.perf_counter()
        if sc.count < 0:
            raise BadInput(f"count={sc.count}; give the number of scenarios (>= 0)")
        topos = sc.topologies
        if topos is not None and len(topos) != sc.count:
            raise BadInput(f"topologies has {len(topos)} entries for {sc.count} scenarios; give one per scenario")
        lp, lq, dp, dq = self._injections(sc)
        out = _Rows.empty(sc.count, len(self.bus_ids), len(self.line_ids), len(self.transformer_ids))
        groups: dict[Topology, list[int]] = {}
        for i in range(sc.count):
            groups.setdefault(topos[i] if topos is not None else BASE_TOPOLOGY, []).append(i)
        for topo, idx_list in groups.items():
            idx = np.asarray(idx_list, dtype=np.int64)
            net = self._network(topo)
            if isinstance(net, str):
                why = f"the batched engine does not handle this topology: {net}"
                self._fall_back(out, topo, idx, lp, lq, dp, dq, why)
                continue
            failed: list[int] = []
            for start in range(0, len(idx), self.chunk_size):
                chunk = idx[start:start + self.chunk_size]
                failed.extend(self._batch(net, chunk, lp, lq, dp, dq, out))
            if failed:
                fidx = np.asarray(failed, dtype=np.int64)
                why = (f"the fixed-point iteration did not reach {self.tolerance_mva:g} MVA mismatch in "
                       f"{self.max_iterations} iterations")
                if self.fallback:
                    self._fall_back(out, topo, fidx, lp, lq, dp, dq, why)
                else:
                    for i in failed:
                        out.reason[i] = why
        return BatchResult(
            feeder_id=self.feeder.id,
            bus_ids=self.bus_ids,
            line_ids=self.line_ids,
            transformer_ids=self.transformer_ids,
            vm_pu=_frozen(out.vm),
            va_degree=_frozen(out.va),
            line_i_ka=_frozen(out.line_i),
            line_loading_percent=_frozen(out.line_loading),
            transformer_loading_percent=_frozen(out.trafo_loading),
            losses_mw=_frozen(out.losses),
            p_source_mw=_frozen(out.p_src),
            q_source_mvar=_frozen(out.q_src),
            converged=_frozen(out.converged),
            iterations=_frozen(out.iterations),
            engine=tuple(out.engine),
            reason=tuple(out.reason),
            topology_groups=len(groups),
            solve_time_s=time.perf_counter() - t0,
        )

    def _batch(
        self,
        net: _Network,
        idx: np.ndarray,
        lp: np.ndarray,
        lq: np.ndarray,
        dp: np.ndarray,
        dq: np.ndarray,
        out: _Rows,
    ) -> list[int]:
        """Solve the scenarios ``idx`` on ``net``; fill ``out``; return those that did not converge."""
        k = len(idx)
        # Specified injections per ppci bus, generator convention, per unit: (n, k).
        s_spec = np.zeros((net.n, k), dtype=complex)
        if lp.shape[1]:
            s_spec -= net.load_map @ np.ascontiguousarray((lp[idx] + 1j * lq[idx]).T)
        if dp.shape[1]:
            s_spec += net.der_map @ np.ascontiguousarray((dp[idx] + 1j * dq[idx]).T)
        s_spec /= net.base_mva
        tol = self.tolerance_mva / net.base_mva
        v_final = np.empty((len(net.nonref), k), dtype=complex)
        iters = np.zeros(k, dtype=np.int64)
        done = np.zeros(k, dtype=bool)
        if net.lu is None:
            done[:] = True
        else:
            cols = np.arange(k)  # scenario (local index) of each working column
            s_n = np.ascontiguousarray(s_spec[net.nonref])
            v = np.repeat(net.v_noload[:, None], k, axis=1)
            for it in range(1, self.max_iterations + 1):
                q = s_n / v  # S / V: the current injection is its conjugate
                rhs = np.conjugate(q)
                rhs += net.i_const[:, None]
                v_new = net.lu.solve(rhs)
                # Mismatch at v_new without another product with Y: |S/V| |v_new - V| per bus.
                np.abs(q, out=q.real)
                mismatch = (q.real * np.abs(v_new - v)).max(axis=0)
                iters[cols] = it
                ok = mismatch < tol
                keep = ~ok & np.isfinite(mismatch)
                if ok.any():
                    v_final[:, cols[ok]] = v_new[:, ok]
                    done[cols[ok]] = True
                if keep.all():
                    v = v_new
                    continue
                cols = cols[keep]
                if not len(cols):
                    break
                v = np.ascontiguousarray(v_new[:, keep])
                s_n = np.ascontiguousarray(s_n[:, keep])
        good = np.flatnonzero(done)
        if len(good):
            if len(good) < k:
                self._extract(net, idx[good], v_final[:, good], s_spec[:, good], iters[good], out)
            else:
                self._extract(net, idx, v_final, s_spec, iters, out)
        return idx[~done].tolist()

    @staticmethod
    def _extract(net: _Network, rows: np.ndarray, vn: np.ndarray, s_spec: np.ndarray, iters: np.ndarray,
                 out: _Rows) -> None:
        k = len(rows)
        v = np.empty((net.n, k), dtype=complex)
        v[net.ref] = net.v_ref[:, None]
        v[net.nonref] = vn
        on = net.bus_pos >= 0
        vb = v[net.bus_pos[on]].T
        vm = np.full((k, len(net.bus_pos)), np.nan)
        va = np.full((k, len(net.bus_pos)), np.nan)
        vm[:, on] = np.abs(vb)
        va[:, on] = np.degrees(np.angle(vb))
        out.vm[rows] = vm
        out.va[rows] = va
        base = net.base_mva
        # Branch currents as pandapower reports them: |S| / (|V| kV sqrt3) = |I_pu| base / (kV sqrt3).
        if len(net.line_rows):
            i_f = np.abs(net.line_yf @ v) * (base / _SQRT3 / net.line_kv_f)[:, None]
            i_t = np.abs(net.line_yt @ v) * (base / _SQRT3 / net.line_kv_t)[:, None]
            i_ka = np.maximum(i_f, i_t)
            line_i = np.zeros((k, out.line_i.shape[1]))
            line_ld = np.zeros((k, out.line_i.shape[1]))
            line_i[:, net.line_rows] = np.where(i_ka < NOISE_I_KA, 0.0, i_ka).T  # as PowerFlowModel reports it
            line_ld[:, net.line_rows] = (i_ka * (100.0 / net.line_i_max_ka)[:, None]).T
            out.line_i[rows] = line_i
            out.line_loading[rows] = line_ld
        if len(net.trafo_rows):
            i_f = np.abs(net.trafo_yf @ v) * (base / _SQRT3 / net.trafo_kv_f)[:, None]
            i_t = np.abs(net.trafo_yt @ v) * (base / _SQRT3 / net.trafo_kv_t)[:, None]
            ld = np.maximum(i_f * net.trafo_vn_kv[:, :1], i_t * net.trafo_vn_kv[:, 1:]) * _SQRT3
            t_ld = np.zeros((k, out.trafo_loading.shape[1]))
            t_ld[:, net.trafo_rows] = (ld * (100.0 / net.trafo_sn_mva)[:, None]).T
            out.trafo_loading[rows] = t_ld
        # Source output: computed injection at the slack buses minus what loads/DER there inject.
        s_ref = v[net.ref] * np.conj(net.y_r @ v) - s_spec[net.ref]
        p_src = np.real(s_ref).sum(axis=0)
        out.p_src[rows] = p_src * base
        out.q_src[rows] = np.imag(s_ref).sum(axis=0) * base
        # Line + transformer losses = all that enters the network (sources, DER) minus what loads and
        # shunt conductances take; exact to the mismatch tolerance.
        shunt_p = (net.shunt_g[:, None] * np.abs(v[net.shunt_rows]) ** 2).sum(axis=0) if len(net.shunt_rows) else 0.0
        out.losses[rows] = (p_src + np.real(s_spec).sum(axis=0) - shunt_p) * base
        out.converged[rows] = True
        out.iterations[rows] = iters
        for r in rows.tolist():
            out.engine[r] = "batched"
            out.reason[r] = None

    def _fall_back(
        self,
        out: _Rows,
        topo: Topology,
        idx: np.ndarray,
        lp: np.ndarray,
        lq: np.ndarray,
        dp: np.ndarray,
        dq: np.ndarray,
        why: str,
    ) -> None:
        kwargs = topo.solve_kwargs()
        for i in idx.tolist():
            r = self.model.solve(
                load_p_mw=dict(zip(self.load_ids, lp[i].tolist(), strict=True)),
                load_q_mvar=dict(zip(self.load_ids, lq[i].tolist(), strict=True)),
                der_p_mw=dict(zip(self.der_ids, dp[i].tolist(), strict=True)),
                der_q_mvar=dict(zip(self.der_ids, dq[i].tolist(), strict=True)),
                **kwargs,
            )
            out.engine[i] = "pandapower-fallback"
            out.iterations[i] = 0
            self._fill_from(out, i, r, why)

    @staticmethod
    def _fill_from(out: _Rows, i: int, r: PowerFlowResult, why: str) -> None:
        out.converged[i] = r.converged
        if not r.converged:
            out.reason[i] = f"{why}; pandapower failed too: {r.reason}"
            return
        out.reason[i] = f"{why}; solved by pandapower" + (f" ({r.reason})" if r.reason else "")
        if r.buses:
            out.vm[i] = [np.nan if b.vm_pu is None else b.vm_pu for b in r.buses]
            out.va[i] = [np.nan if b.va_degree is None else b.va_degree for b in r.buses]
        if r.lines:
            out.line_i[i] = [ln.i_ka for ln in r.lines]
            out.line_loading[i] = [ln.loading_percent for ln in r.lines]
        if r.transformers:
            out.trafo_loading[i] = [t.loading_percent for t in r.transformers]
        out.losses[i] = r.losses_mw
        out.p_src[i] = r.p_source_mw
        out.q_src[i] = r.q_source_mvar


def solve_scenarios(feeder: Feeder, scenarios: Scenarios, **options: Any) -> BatchResult:
    """One-shot: ``BatchedPowerFlow(feeder, **options).solve(scenarios)``."""
    return BatchedPowerFlow(feeder, **options).solve(scenarios)


def random_scenarios(
    engine: BatchedPowerFlow,
    count: int,
    *,
    seed: int,
    load_range: tuple[float, float] = (0.5, 1.5),
    der_range: tuple[float, float] = (0.0, 1.0),
    topologies: Sequence[Topology] | None = None,
) -> Scenarios:
    """Seeded random scenarios: each load's p and q times a uniform factor in ``load_range``
    (per load, same power factor), each DER at a uniform share of its rating ``sn_mva`` in
    ``der_range`` (unity power factor). For tests and benchmarks."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(*load_range, size=(count, len(engine.load_ids)))
    sn = np.array([d.sn_mva for d in engine.feeder.ders], dtype=float)
    der_p = rng.uniform(*der_range, size=(count, len(engine.der_ids))) * sn
    return Scenarios(
        count=count,
        load_p_mw=f * engine._load_p,
        load_q_mvar=f * engine._load_q,
        der_p_mw=der_p,
        der_q_mvar=np.zeros_like(der_p),
        topologies=tuple(topologies) if topologies is not None else None,
    )
