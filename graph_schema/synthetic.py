"""Synthetic radial MV feeders of any size, for benchmarks and tests (deterministic per seed).

:func:`synthetic_mv_feeder` builds a 110/20 kV substation (on-load tap changer) feeding ``feeders``
radial 20 kV cable feeders grown as random trees with long main lines (each new bus hangs off the
previous one with probability ``spine``, else off a random earlier bus of the same feeder), a
constant-power load at most buses, PV at about one bus in ten, two switched capacitor banks,
normally-open ties between feeders and, with ``closed_ties``, ties that are closed (a weakly meshed
network). It goes through :func:`~graph_schema.importers.from_pandapower` like every other network,
so the feeder model, the power flow and the importer agree on it.
"""

from __future__ import annotations

import numpy as np

from graph_schema.importers import from_pandapower
from graph_schema.model import Feeder, Limits
from graph_schema.quiet import quiet_warnings

# NA2XS2Y 1x240 RM/25 12/20 kV cable, pandapower's standard type.
_R_OHM_PER_KM, _X_OHM_PER_KM, _C_NF_PER_KM, _MAX_I_KA = 0.122, 0.112, 304.0, 0.421

SYNTHETIC_LIMITS = Limits(vm_min_pu=0.92, vm_max_pu=1.06, emergency_vm_min_pu=0.90, emergency_vm_max_pu=1.08)


def synthetic_mv_feeder(
    n_buses: int = 1000,
    *,
    seed: int = 7,
    feeders: int = 4,
    spine: float = 0.9,
    open_ties: int = 6,
    closed_ties: int = 0,
    feeder_id: str | None = None,
) -> Feeder:
    """A validated :class:`Feeder` with ``n_buses`` buses (one 110 kV, the rest 20 kV)."""

    import pandapower as pp

    if n_buses < 2 + feeders:
        raise ValueError(f"n_buses={n_buses}: need at least feeders + 2 = {feeders + 2}")
    rng = np.random.default_rng(seed)
    with quiet_warnings():
        net = pp.create_empty_network(name=f"synthetic-{n_buses}", sn_mva=1.0)
        hv = pp.create_bus(net, vn_kv=110.0, name="HV")
        pp.create_ext_grid(net, hv, vm_pu=1.0, s_sc_max_mva=3000.0, rx_max=0.1)
        mv = pp.create_bus(net, vn_kv=20.0, name="MV busbar")
        pp.create_transformer_from_parameters(
            net, hv, mv, sn_mva=40.0, vn_hv_kv=110.0, vn_lv_kv=20.0, vkr_percent=0.32, vk_percent=12.0,
            pfe_kw=22.0, i0_percent=0.06, tap_side="hv", tap_neutral=0, tap_min=-9, tap_max=9,
            tap_step_percent=1.5, tap_pos=0, tap_changer_type="Ratio",
        )
        rest = n_buses - 2
        sizes = np.full(feeders, rest // feeders)
        sizes[: rest % feeders] += 1
        first = 2  # pandapower index of the next bus created
        members: list[np.ndarray] = []
        from_bus: list[int] = []
        for m in sizes.tolist():
            buses = np.arange(first, first + m)
            first += m
            spine_draw = rng.random(m) < spine
            pick = rng.random(m)
            for j in range(m):
                if j == 0:
                    from_bus.append(mv)
                elif spine_draw[j]:
                    from_bus.append(int(buses[j - 1]))
                else:  # any earlier bus of this feeder, or the busbar
                    k = int(pick[j] * (j + 1))
                    from_bus.append(mv if k == j else int(buses[k]))
            members.append(buses)
        mv_buses = np.concatenate(members)
        pp.create_buses(net, len(mv_buses), vn_kv=20.0)
        cable = {"r_ohm_per_km": _R_OHM_PER_KM, "x_ohm_per_km": _X_OHM_PER_KM, "c_nf_per_km": _C_NF_PER_KM,
                 "max_i_ka": _MAX_I_KA}
        pp.create_lines_from_parameters(net, from_bus, mv_buses, length_km=rng.uniform(0.2, 0.6, len(mv_buses)),
                                        **cable)
        has_load = rng.random(len(mv_buses)) < 0.85
        p_load = rng.uniform(0.01, 0.06, int(has_load.sum()))
        pp.create_loads(net, mv_buses[has_load], p_mw=p_load, q_mvar=p_load * 0.33)
        has_pv = rng.random(len(mv_buses)) < 0.1
        sn = rng.uniform(0.05, 0.4, int(has_pv.sum()))
        pp.create_sgens(net, mv_buses[has_pv], p_mw=0.5 * sn, q_mvar=0.0, sn_mva=sn, type="PV")
        for group in members[:2]:
            pp.create_shunt(net, int(group[len(group) // 2]), q_mvar=-0.3, step=1, max_step=2)
        ties = open_ties + closed_ties
        if ties:
            ends = []
            for _ in range(ties):
                a, b = rng.choice(len(members), size=2, replace=False)
                ends.append((int(rng.choice(members[int(a)])), int(rng.choice(members[int(b)]))))
            fb = [e[0] for e in ends]
            lines = pp.create_lines_from_parameters(
                net, fb, [e[1] for e in ends], length_km=rng.uniform(0.2, 1.0, ties), **cable
            )
            pp.create_switches(net, fb, lines, et="l", closed=[k >= open_ties for k in range(ties)], type="LBS")
    fid = feeder_id or f"synthetic-{n_buses}"
    return from_pandapower(net, fid, f"Synthetic {n_buses}-bus MV feeder", limits=SYNTHETIC_LIMITS,
                           feeder_breakers=True)
