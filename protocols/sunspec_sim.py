"""Simulated SunSpec Modbus inverters: every DER of a simulated feeder served as a SunSpec device.

Register layout (SunSpec Information Model Specification, Modbus TCP, holding registers): ``SunS``
at 40000, then model 1 (common), 701 (DER AC measurements), 702 (capacity/nameplate), 703 (enter
service), 704 (AC controls: P limit, P set point, power factor, Q set point, ramp), 705 (volt-var,
two curves: curve 1 active and read-only, curve 2 writable, adopted by ``AdptCrvReq=2``), 706
(volt-watt, same scheme), 711 (frequency droop), 713 (storage capacity, storage only), end model.
Each model's registers come from pysunspec2's own model definitions (``sunspec2.device.Model``), so
the layout is the one a pysunspec2 client discovers by scanning, not a copy of it.

The inverters behave (:func:`actors.cores.der.inverter_target` and :func:`ramp_towards`): every
tick they take their terminal voltage from the simulator's last solve and the power their resource
offers, follow their active volt-var / volt-watt curve, P limit, power factor or Q set point within
their kVA, P and Q ratings, ramp, and their output goes into the next solve. They start as shipped:
the category's default curves loaded but not enabled (unity power factor), so a feeder behaves as
before until someone enables a function (``Ena`` of 705/706, e.g. ``setDerControl`` with
``useCategoryDefaults``). Storage integrates its
state of charge and respects its SOC limits. Frequency is nominal in the simulator, so the droop
settings (711) are served and stored but never act.

A write is refused (Modbus exception ILLEGAL_VALUE, as a real inverter does) when it touches a
read-only register or puts a value outside the device's ranges (a P limit over 100 %, a Q set point
beyond the reactive capability, a PF below the capability). A curve adoption that is not monotone
or leaves the 1547 ranges ends ``AdptCrvRslt=FAILED`` and leaves the active curve as it was.
Injected faults per DER (:meth:`SunSpecField.fault`): ``silent`` (no answer), ``refuse`` (every
write refused DEVICE_FAILURE), ``ignore`` (writes acknowledged but not applied: a read-back shows
the old value).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from sunspec2 import device as ss_device

from actors.cores.der import (
    InverterSettings,
    default_volt_var,
    default_volt_watt,
    inverter_target,
    ramp_towards,
    rating,
    validate_volt_var,
    validate_volt_watt,
)
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import Der, Feeder

log = logging.getLogger(__name__)

BASE_ADDR = 40000
SUNSPEC_FAULTS = ("silent", "refuse", "ignore")
FIRST_UNIT_ID = 1


def unit_ids(feeder: Feeder) -> dict[str, int]:
    """DER id -> the Modbus unit id it answers on: ``Der.sunspec_unit_id``, else its position."""
    out: dict[str, int] = {}
    for i, d in enumerate(feeder.ders):
        out[d.id] = d.sunspec_unit_id if d.sunspec_unit_id is not None else FIRST_UNIT_ID + i
    if len(set(out.values())) != len(out):
        raise BadInput(f"feeder {feeder.id!r} has DERs sharing a SunSpec unit id; give each a distinct sunspec_unit_id")
    return out


def _sf_for(max_value: float, limit: int = 32767) -> int:
    """The smallest scale factor (>= -3) at which ``max_value`` fits a 16-bit register."""
    for sf in range(-3, 10):
        if abs(max_value) / 10.0**sf <= limit:
            return sf
    return 10


def _regs(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def _walk_points(group: Any) -> list[Any]:
    pts = list(group.points.values())
    for g in group.groups.values():
        for sub in (g if isinstance(g, list) else [g]):
            pts.extend(_walk_points(sub))
    return pts


@dataclass
class SimInverter:
    """One simulated SunSpec inverter (all of its models, its settings and its output)."""

    der: Der
    unit_id: int
    v_nom_v: float  # line-to-neutral nominal voltage
    models: dict[int, Any] = field(default_factory=dict)  # model id -> sunspec2.device.Model
    addr: dict[int, int] = field(default_factory=dict)  # model id -> address of its ID register
    writable: dict[int, set[int]] = field(default_factory=dict)  # model id -> writable register offsets
    image: list[int] = field(default_factory=list)
    p_mw: float = 0.0
    q_mvar: float = 0.0
    v_pu: float = 1.0
    soc_pct: float = 50.0
    last_step: float | None = None
    fault: str | None = None
    writes: int = 0  # writes applied (what tests assert on to prove that nothing was sent)

    def __post_init__(self) -> None:
        # The simulator steps and publishes in a worker thread while Modbus writes arrive on the event
        # loop: one lock keeps a write and the image rebuilt from it together (a rebuild from an older
        # snapshot would otherwise overwrite a write just acknowledged).
        self._lock = threading.RLock()
        self._settings: InverterSettings | None = None
        r = rating(self.der)
        s_w = r.s_mva * 1e6
        self.w_sf = _sf_for(s_w * 1.2)
        self.v_sf = _sf_for(self.v_nom_v * math.sqrt(3) * 1.3, 65535) if self.v_nom_v > 0 else 0
        self.rating = r
        vv = default_volt_var(r.category)
        vw = default_volt_watt(r.category)

        def crv(points: Sequence[tuple[float, float]], ro: int, key: str) -> dict[str, Any]:
            return {"ActPt": len(points), "DeptRef": 1 if key == "Var" else 0, "Pri": 1, "VRef": 100,
                    "VRefAutoEna": 0, "VRefAutoTms": 0, "RspTms": 5, "ReadOnly": ro,
                    "Pt": [{"V": round(v), key: round(y)} for v, y in points]}

        storage = r.storage
        q_var = r.q_max_mvar * 1e6
        p_w = r.p_max_mw * 1e6
        vnom = self.v_nom_v
        defs: list[tuple[int, dict[str, Any]]] = [
            (1, {"ID": 1, "Mn": "DMS field simulator", "Md": f"SimInverter {self.der.kind}", "Opt": self.der.id[:8],
                 "Vr": "1.0", "SN": self.der.id[:16], "DA": self.unit_id}),
            (701, {"ID": 701, "ACType": 2, "St": 1, "InvSt": 3, "ConnSt": 1, "Alrm": 0, "DERMode": 0,
                   "W": 0, "VA": 0, "Var": 0, "PF": 1000, "A": 0, "LLV": 0, "LNV": 0, "Hz": 5000,
                   "A_SF": 0, "V_SF": self.v_sf, "Hz_SF": -2, "W_SF": self.w_sf, "PF_SF": -3, "VA_SF": self.w_sf,
                   "Var_SF": self.w_sf, "TotWh_SF": 0, "TotVarh_SF": 0, "Tmp_SF": 0, "TotWhInj": 0, "TotWhAbs": 0}),
            (702, {"ID": 702, "WMaxRtg": self._w(p_w), "VAMaxRtg": self._w(s_w), "VarMaxInjRtg": self._w(q_var),
                   "VarMaxAbsRtg": self._w(q_var), "WChaRteMaxRtg": self._w(p_w) if storage else None,
                   "WDisChaRteMaxRtg": self._w(p_w) if storage else None,
                   "VNomRtg": self._v(vnom), "VMaxRtg": self._v(vnom * 1.2), "VMinRtg": self._v(vnom * 0.5),
                   "NorOpCatRtg": 1 if r.category == "B" else 0, "AbnOpCatRtg": 2, "CtrlModes": 0,
                   "WMax": self._w(p_w), "VAMax": self._w(s_w), "VarMaxInj": self._w(q_var),
                   "VarMaxAbs": self._w(q_var), "VNom": self._v(vnom), "VMax": self._v(vnom * 1.2),
                   "VMin": self._v(vnom * 0.5),
                   "W_SF": self.w_sf, "PF_SF": -3, "VA_SF": self.w_sf, "Var_SF": self.w_sf, "V_SF": self.v_sf,
                   "A_SF": 0, "S_SF": 0}),
            (703, {"ID": 703, "ES": 1, "ESVHi": 105, "ESVLo": 92, "ESHzHi": 6010, "ESHzLo": 5950, "ESDlyTms": 300,
                   "ESRndTms": 0, "ESRmpTms": 300, "ESDlyRemTms": 0, "V_SF": 0, "Hz_SF": -2}),
            (704, {"ID": 704, "PFWInjEna": 0, "PFWInjEnaRvrt": 0, "PFWAbsEna": 0, "PFWAbsEnaRvrt": 0,
                   "WMaxLimPctEna": 0, "WMaxLimPct": 1000, "WMaxLimPctRvrt": 1000, "WMaxLimPctEnaRvrt": 0,
                   "WSetEna": 0, "WSetMod": 1, "WSet": 0, "WSetRvrt": 0, "WSetPct": 0, "WSetPctRvrt": 0,
                   "WSetEnaRvrt": 0, "VarSetEna": 0, "VarSetMod": 4, "VarSetPri": 1, "VarSet": 0, "VarSetRvrt": 0,
                   "VarSetPct": 0, "VarSetPctRvrt": 0, "VarSetEnaRvrt": 0, "WRmp": 100, "WRmpRef": 1, "VarRmp": 100,
                   "AntiIslEna": 1, "PF_SF": -3, "WMaxLimPct_SF": -1, "WSet_SF": self.w_sf, "WSetPct_SF": 0,
                   "VarSet_SF": self.w_sf, "VarSetPct_SF": 0,
                   "PFWInj": {"PF": 1000, "Ext": 0}, "PFWInjRvrt": {"PF": 1000, "Ext": 0},
                   "PFWAbs": {"PF": 1000, "Ext": 1}, "PFWAbsRvrt": {"PF": 1000, "Ext": 1}}),
            (705, {"ID": 705, "Ena": 0, "AdptCrvReq": 0, "AdptCrvRslt": 1, "NPt": 4, "NCrv": 2, "RvrtTms": 0,
                   "RvrtRem": 0, "RvrtCrv": 0, "V_SF": 0, "DeptRef_SF": 0, "RspTms_SF": 0,
                   "Crv": [crv(vv, 1, "Var"), crv(vv, 0, "Var")]}),
            (706, {"ID": 706, "Ena": 0, "AdptCrvReq": 0, "AdptCrvRslt": 1, "NPt": 2, "NCrv": 2, "RvrtTms": 0,
                   "RvrtRem": 0, "RvrtCrv": 0, "V_SF": 0, "DeptRef_SF": 0, "RspTms_SF": 0,
                   "Crv": [{"ActPt": 2, "DeptRef": 0, "RspTms": 10, "ReadOnly": 1,
                            "Pt": [{"V": round(v), "W": round(y)} for v, y in vw]},
                           {"ActPt": 2, "DeptRef": 0, "RspTms": 10, "ReadOnly": 0,
                            "Pt": [{"V": round(v), "W": round(y)} for v, y in vw]}]}),
            (711, {"ID": 711, "Ena": 1, "AdptCtlReq": 0, "AdptCtlRslt": 1, "NCtl": 1, "RvrtTms": 0, "RvrtRem": 0,
                   "RvrtCtl": 0, "Db_SF": -3, "K_SF": -2, "RspTms_SF": 0,
                   "Ctl": [{"DbOf": 36, "DbUf": 36, "KOf": 5, "KUf": 5, "RspTms": 5, "PMin": 0, "ReadOnly": 0}]}),
        ]
        if storage:
            e_wh = (self.der.max_e_mwh or r.p_max_mw) * 1e6
            self.wh_sf = _sf_for(e_wh * 1.01, 65535)
            defs.append((713, {"ID": 713, "WHRtg": round(e_wh / 10**self.wh_sf), "WHAvail": 0, "SoC": 500,
                               "SoH": 1000, "Sta": 0, "WH_SF": self.wh_sf, "Pct_SF": -1}))
        addr = BASE_ADDR + 2
        for mid, data in defs:
            m = ss_device.Model(model_id=mid, data=data)
            self.models[mid] = m
            self.addr[mid] = addr
            self.writable[mid] = {
                p.offset + i for p in _walk_points(m) if p.pdef.get("access") == "RW" for i in range(int(p.len))}
            addr += int(m.len)  # the length pysunspec2 computes includes ID and L
        self.rebuild()

    # -- scaling ---------------------------------------------------------------------------------
    def _w(self, watts: float) -> int:
        return max(0, min(65535, round(watts / 10.0**self.w_sf)))

    def _v(self, volts: float) -> int:
        return max(0, min(65535, round(volts / 10.0**self.v_sf)))

    def pt(self, mid: int, name: str) -> Any:
        return self.models[mid].points[name]

    def set_local(self, mid: int, name: str, value: Any) -> None:
        """Change a setting at the device itself (its front panel; tests), as a write would."""
        with self._lock:
            self.models[mid].points[name].value = value
            self._settings = None
            self.rebuild(mid)

    # -- register image --------------------------------------------------------------------------
    def rebuild(self, mid: int | None = None) -> None:
        """The register image again: whole, or only model ``mid``'s registers (a tick republishes
        701/713 only: rebuilding every model of every DER each tick cost tens of ms per feeder)."""
        if mid is not None and self.image:
            off = self.addr[mid] - BASE_ADDR
            regs = _regs(self.models[mid].get_mb())
            image = list(self.image)
            image[off:off + len(regs)] = regs
            self.image = image
            return
        regs = _regs(b"SunS")
        for m in self.models.values():
            regs.extend(_regs(m.get_mb()))
        regs.extend([0xFFFF, 0])
        self.image = regs

    def read(self, address: int, count: int) -> list[int] | None:
        off = address - BASE_ADDR
        if off < 0 or off + count > len(self.image):
            return None
        return self.image[off:off + count]

    def write(self, address: int, values: Sequence[int]) -> ExcCodes | None:
        """A Modbus write: validated as the device would, applied (or refused) whole."""
        with self._lock:
            return self._write(address, values)

    def _write(self, address: int, values: Sequence[int]) -> ExcCodes | None:
        if self.fault == "refuse":
            return ExcCodes.DEVICE_FAILURE
        for mid, m in self.models.items():
            start = self.addr[mid]
            if start <= address and address + len(values) <= start + int(m.len):
                break
        else:
            return ExcCodes.ILLEGAL_ADDRESS
        rel = address - start
        if any(rel + i not in self.writable[mid] for i in range(len(values))):
            return ExcCodes.ILLEGAL_ADDRESS  # a read-only register
        regs = _regs(m.get_mb())
        regs[rel:rel + len(values)] = [int(v) & 0xFFFF for v in values]
        data = b"".join(r.to_bytes(2, "big") for r in regs)
        scratch = ss_device.Model(model_id=mid, data=m.get_dict())
        scratch.set_mb(data)
        refusal = self._check(mid, scratch)
        if refusal is not None:
            log.info("sunspec sim %s: write to model %s refused: %s", self.der.id, mid, refusal)
            return ExcCodes.ILLEGAL_VALUE
        if self.fault == "ignore":
            return None  # acknowledged, not applied
        m.set_mb(data)
        self._adopt(mid)
        self.writes += 1
        self._settings = None
        self.rebuild(mid)
        return None

    def _check(self, mid: int, m: Any) -> str | None:
        p = m.points
        if mid == 704:
            lim = p["WMaxLimPct"].cvalue
            if lim is not None and not 0.0 <= lim <= 100.0:
                return f"WMaxLimPct {lim} outside 0..100 %"
            var = p["VarSet"].cvalue
            if var is not None and abs(var) > self.rating.q_max_mvar * 1e6 * 1.001 + 10.0**self.w_sf:
                return f"VarSet {var} beyond the reactive capability"
            wset = p["WSet"].cvalue
            if wset is not None and abs(wset) > self.rating.p_max_mw * 1e6 * 1.001 + 10.0**self.w_sf:
                return f"WSet {wset} beyond the rating"
            pf = m.PFWInj.points["PF"].cvalue
            if pf is not None and not 0.0 < pf <= 1.0:
                return f"PF {pf} outside (0, 1]"
        return None

    def _adopt(self, mid: int) -> None:
        """Curve adoption (705/706): ``AdptCrvReq=2`` copies curve 2 to the active curve 1 when it
        is a valid 1547 curve; the result says COMPLETED (1) or FAILED (2)."""
        if mid not in (705, 706):
            return
        m = self.models[mid]
        req = m.points["AdptCrvReq"].value
        if not req:
            return
        key = "Var" if mid == 705 else "W"
        result = 2
        if req == 2:
            staged = m.groups["Crv"][1]
            pts = [(float(pt.points["V"].cvalue), float(pt.points[key].cvalue))
                   for pt in staged.groups["Pt"][: int(staged.points["ActPt"].value or 0)]]
            try:
                (validate_volt_var if mid == 705 else validate_volt_watt)(pts)
            except BadInput as exc:
                log.info("sunspec sim %s: curve adoption on model %s failed: %s", self.der.id, mid, exc.message)
            else:
                active = m.groups["Crv"][0]
                for i, pt in enumerate(staged.groups["Pt"]):
                    active.groups["Pt"][i].points["V"].value = pt.points["V"].value
                    active.groups["Pt"][i].points[key].value = pt.points[key].value
                active.points["ActPt"].value = staged.points["ActPt"].value
                result = 1
        m.points["AdptCrvReq"].value = 0
        m.points["AdptCrvRslt"].value = result

    # -- behaviour -------------------------------------------------------------------------------
    def settings(self) -> InverterSettings:
        """The settings the registers hold (cached until the next write; SOC is live)."""
        cached = getattr(self, "_settings", None)
        if cached is None:
            cached = self._settings = self._read_settings()
        return replace(cached, soc_pct=self.soc_pct) if self.rating.storage else cached

    def _read_settings(self) -> InverterSettings:
        r = self.rating
        c = self.models[704].points
        w_max = (self.pt(702, "WMax").cvalue or 0.0) / 1e6 or r.p_max_mw
        q_max = (self.pt(702, "VarMaxInj").cvalue or 0.0) / 1e6 or r.q_max_mvar

        def curve(mid: int, key: str) -> tuple[tuple[float, float], ...] | None:
            m = self.models[mid]
            if not m.points["Ena"].value:
                return None
            act = m.groups["Crv"][0]
            n = int(act.points["ActPt"].value or 0)
            return tuple((float(pt.points["V"].cvalue), float(pt.points[key].cvalue)) for pt in act.groups["Pt"][:n])

        pf = None
        if c["PFWInjEna"].value:
            g = self.models[704].groups["PFWInj"].points
            pf = (float(g["PF"].cvalue or 1.0), not g["Ext"].value)
        return InverterSettings(
            s_mva=r.s_mva, p_max_mw=min(w_max, r.p_max_mw), q_max_mvar=min(q_max, r.q_max_mvar),
            connected=bool(self.pt(703, "ES").value),
            p_limit_pct=float(c["WMaxLimPct"].cvalue) if c["WMaxLimPctEna"].value else None,
            p_set_mw=float(c["WSet"].cvalue) / 1e6 if c["WSetEna"].value else None,
            pf=pf,
            q_set_mvar=float(c["VarSet"].cvalue) / 1e6 if c["VarSetEna"].value else None,
            volt_var=curve(705, "Var"), volt_watt=curve(706, "W"),
            ramp_pct_per_s=float(c["WRmp"].value or 100.0),
            storage=r.storage, soc_pct=self.soc_pct if r.storage else None,
            soc_min_pct=r.soc_min_pct, soc_max_pct=r.soc_max_pct,
        )

    def step(self, v_pu: float, p_avail_mw: float, now: float) -> tuple[float, float]:
        """Advance to ``now`` (monotonic seconds) at terminal voltage ``v_pu``; returns (p_mw, q_mvar)."""
        with self._lock:
            return self._step(v_pu, p_avail_mw, now)

    def _step(self, v_pu: float, p_avail_mw: float, now: float) -> tuple[float, float]:
        dt = 0.0 if self.last_step is None else max(0.0, now - self.last_step)
        first = self.last_step is None
        self.last_step = now
        self.v_pu = v_pu
        s = self.settings()
        target = inverter_target(s, v_pu, p_avail_mw)
        if first:
            self.p_mw, self.q_mvar = target
        else:
            self.p_mw, self.q_mvar = ramp_towards(self.p_mw, self.q_mvar, target, s, dt)
        if self.rating.storage and self.der.max_e_mwh:
            self.soc_pct -= self.p_mw * dt / 3600.0 / self.der.max_e_mwh * 100.0
            self.soc_pct = max(0.0, min(100.0, self.soc_pct))
        return self.p_mw, self.q_mvar

    def publish(self, energized: bool) -> None:
        """Measurements into model 701 (and 713)."""
        with self._lock:
            self._publish(energized)

    def _publish(self, energized: bool) -> None:
        m = self.models[701].points
        p, q = (self.p_mw, self.q_mvar) if energized else (0.0, 0.0)
        s = math.hypot(p, q)
        sc = 10.0**self.w_sf
        m["W"].value = round(p * 1e6 / sc)
        m["Var"].value = round(q * 1e6 / sc)
        m["VA"].value = round(s * 1e6 / sc)
        m["PF"].value = round((abs(p) / s if s > 1e-12 else 1.0) * 1000)
        v = self.v_pu * self.v_nom_v if energized else 0.0
        m["LNV"].value = self._v(v)
        m["LLV"].value = self._v(v * math.sqrt(3))
        m["A"].value = round(s * 1e6 / (3 * v)) if v > 0 else 0
        connected = bool(self.pt(703, "ES").value) and energized
        m["ConnSt"].value = 1 if connected else 0
        m["St"].value = 1 if connected else 0
        lim = self.models[704].points
        m["InvSt"].value = (4 if lim["WMaxLimPctEna"].value else 3) if connected else 7
        if 713 in self.models:
            st = self.models[713].points
            st["SoC"].value = round(self.soc_pct * 10)
            e_wh = (self.der.max_e_mwh or 0.0) * 1e6
            st["WHAvail"].value = round(e_wh * self.soc_pct / 100.0 / 10**self.wh_sf)
            self.rebuild(713)
        self.rebuild(701)


class _SunSpecContext(ModbusServerContext):
    """Server context of one feeder's inverters (one unit id each); see protocols.simulator."""

    def __init__(self, inverters: Mapping[int, SimInverter], on_write: Callable[[], None]) -> None:
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}
        self.inverters = inverters
        self.on_write = on_write

    def device_ids(self) -> list[int]:
        return list(self.inverters)

    def _inv(self, device_id: int) -> SimInverter:
        inv = self.inverters.get(device_id)
        if inv is None or inv.fault == "silent":
            raise NoSuchIdException(f"device_id {device_id} silent")
        return inv

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        inv = self._inv(device_id)
        if func_code not in (3, 4, 6, 16, 23):  # pymodbus reads back after a write with the write FC
            return ExcCodes.ILLEGAL_FUNCTION
        regs = inv.read(address, count)
        return ExcCodes.ILLEGAL_ADDRESS if regs is None else regs

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        inv = self._inv(device_id)
        if func_code not in (6, 16):
            return ExcCodes.ILLEGAL_FUNCTION
        result = inv.write(address, [int(v) for v in values])
        if result is None:
            self.on_write()
        return result


@dataclass
class SunSpecEndpoint:
    """Where a DER's SunSpec device answers."""

    der_id: str
    host: str
    port: int
    unit_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"der_id": self.der_id, "host": self.host, "port": self.port, "unit_id": self.unit_id}


class SunSpecField:
    """The SunSpec inverters of every simulated feeder: one Modbus TCP server per feeder."""

    def __init__(self, host: str, on_write: Callable[[], None]) -> None:
        self.host = host
        self._on_write = on_write
        self.inverters: dict[str, dict[str, SimInverter]] = {}  # feeder -> der id -> inverter
        self.ports: dict[str, int] = {}
        self._servers: list[ModbusTcpServer] = []
        self._contexts: dict[str, _SunSpecContext] = {}

    async def start_feeder(self, feeder: Feeder, port: int) -> None:
        if not feeder.ders:
            return
        units = unit_ids(feeder)
        vn = {b.id: b.vn_kv for b in feeder.buses}
        invs = {d.id: SimInverter(d, units[d.id], vn.get(d.bus_id, 0.4) * 1e3 / math.sqrt(3)) for d in feeder.ders}
        self.inverters[feeder.id] = invs
        ctx = _SunSpecContext({i.unit_id: i for i in invs.values()}, self._on_write)
        self._contexts[feeder.id] = ctx
        server = ModbusTcpServer(ctx, address=(self.host, port), ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._servers.append(server)
        self.ports[feeder.id] = port
        log.info("simulator: SunSpec Modbus of %s on %s:%s units %s", feeder.id, self.host, port,
                 sorted(ctx.inverters))

    async def stop(self) -> None:
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await srv.shutdown()
        self._servers.clear()

    def endpoints(self, feeder_id: str) -> list[SunSpecEndpoint]:
        invs = self.inverters.get(feeder_id, {})
        port = self.ports.get(feeder_id, 0)
        return [SunSpecEndpoint(i.der.id, self.host, port, i.unit_id) for i in invs.values()]

    def outputs(self, feeder_id: str, p_avail: Mapping[str, float], vm_pu: Mapping[str, float | None],
                now: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Every inverter stepped to ``now`` at its terminal voltage (the last solve's); returns
        (p_mw, q_mvar) per DER, to go into the next solve."""
        now = time.monotonic() if now is None else now
        p_out: dict[str, float] = {}
        q_out: dict[str, float] = {}
        for did, inv in self.inverters.get(feeder_id, {}).items():
            vm = vm_pu.get(inv.der.bus_id)
            p, q = inv.step(vm if vm else 1.0, p_avail.get(did, 0.0), now)
            p_out[did], q_out[did] = p, q
        return p_out, q_out

    def publish(self, feeder_id: str, energized: frozenset[str], vm_pu: Mapping[str, float | None]) -> None:
        for inv in self.inverters.get(feeder_id, {}).values():
            vm = vm_pu.get(inv.der.bus_id)
            if vm:
                inv.v_pu = vm
            inv.publish(inv.der.bus_id in energized)

    def inverter(self, der_id: str, feeder_id: str | None = None) -> SimInverter:
        for fid, invs in self.inverters.items():
            if (feeder_id is None or fid == feeder_id) and der_id in invs:
                return invs[der_id]
        raise NotFound(f"DER {der_id!r} is not a simulated SunSpec inverter", element_id=der_id)

    def fault(self, der_id: str, mode: str | None, feeder_id: str | None = None) -> None:
        """Inject a fault (``SUNSPEC_FAULTS``) into one inverter; ``None`` clears it."""
        if mode is not None and mode not in SUNSPEC_FAULTS:
            raise BadInput(f"unknown SunSpec fault {mode!r}; use one of {', '.join(SUNSPEC_FAULTS)}")
        self.inverter(der_id, feeder_id).fault = mode

    def reset(self) -> None:
        """Every inverter back to its defaults (settings, output, no fault)."""
        for fid, invs in self.inverters.items():
            fresh = {did: SimInverter(i.der, i.unit_id, i.v_nom_v) for did, i in invs.items()}
            self.inverters[fid] = fresh
            self._contexts[fid].inverters = {i.unit_id: i for i in fresh.values()}
