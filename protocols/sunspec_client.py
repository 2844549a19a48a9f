"""Head-end SunSpec Modbus client of one DER, on pysunspec2 (``sunspec2.modbus.client``).

pysunspec2 is synchronous (plain sockets): every exchange runs in a worker thread, one at a time
per device (an ``asyncio.Lock``), like the project's other Modbus clients. The device is scanned
once (models discovered from ``SunS`` at 40000, 0 or 50000) and again after any failure.

:meth:`SunSpecClient.read` returns a :class:`DerReading` (models 701 measurements, 702 settings,
703 enter service, 704 controls, 705/706 active curves, 713 state of charge).
:meth:`SunSpecClient.apply` writes a :class:`actors.cores.der.DerControl` and confirms it by
reading the registers back. Failures carry their reason and nothing is retried:

* the device does not answer: :class:`protocols.base.DeviceUnreachable` (``DEVICE_UNREACHABLE``);
* it refuses a write (Modbus exception): :class:`protocols.base.DeviceRejected`
  (``DEVICE_REJECTED``, with the exception code);
* it reads back another value, or ends a curve adoption FAILED: :class:`ReadBackMismatch`
  (``READ_BACK_MISMATCH``), naming the register, what was written and what came back.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from actors.cores.der import Curve, DerControl
from protocols.base import DeviceRejected, DeviceUnreachable, ProtocolError

log = logging.getLogger(__name__)


class ReadBackMismatch(ProtocolError):
    """The device accepted a write but reads back another value."""

    code = "READ_BACK_MISMATCH"


@dataclass(frozen=True, slots=True)
class DerReading:
    """What one SunSpec inverter reports (engineering units; None: not implemented by the device)."""

    der_id: str
    p_mw: float | None
    q_mvar: float | None
    v_v: float | None  # line-to-neutral
    v_pu: float | None  # against its nominal voltage (702 VNom)
    connected: bool
    enter_service: bool
    inverter_state: int | None
    p_max_mw: float | None  # 702 WMax
    q_max_mvar: float | None  # 702 VarMaxInj
    s_max_mva: float | None
    p_limit_pct: float | None  # 704 WMaxLimPct when enabled
    p_set_mw: float | None  # 704 WSet when enabled
    q_set_mvar: float | None  # 704 VarSet when enabled
    power_factor: tuple[float, bool] | None  # 704 PFWInj when enabled (pf, over-excited)
    volt_var: Curve | None  # 705 active curve
    volt_watt: Curve | None  # 706 active curve
    soc_pct: float | None  # 713
    category: str | None  # 702 NorOpCatRtg
    volt_var_enabled: bool = False  # 705 Ena
    volt_watt_enabled: bool = False  # 706 Ena


def _cv(point: Any) -> float | None:
    v = point.cvalue
    return None if v is None else float(v)


class SunSpecClient:
    """One serialized pysunspec2 client for one DER's SunSpec Modbus device."""

    def __init__(self, der_id: str, host: str, port: int, unit_id: int, *, timeout_s: float = 1.0) -> None:
        self.der_id = der_id
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self._dev: Any = None
        self._lock = asyncio.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    def _device(self) -> Any:
        from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

        if self._dev is None:
            dev = SunSpecModbusClientDeviceTCP(slave_id=self.unit_id, ipaddr=self.host, ipport=self.port,
                                               timeout=self.timeout_s)
            dev.connect()
            try:
                dev.scan(connect=False)
            except Exception:
                dev.disconnect()
                raise
            self._dev = dev
        return self._dev

    def _drop(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.disconnect()
            except Exception:  # closing a broken socket: nothing more to do
                log.debug("sunspec %s: disconnect failed", self.der_id, exc_info=True)

    async def _run(self, what: str, fn: Any) -> Any:
        from sunspec2.modbus.client import SunSpecModbusClientError, SunSpecModbusClientException
        from sunspec2.modbus.modbus import ModbusClientError, ModbusClientException

        async with self._lock:
            try:
                return await asyncio.to_thread(fn)
            except (ModbusClientException, SunSpecModbusClientException) as exc:
                self._drop()
                code = _exception_code(str(exc))
                raise DeviceRejected(f"DER {self.der_id} refused to {what}: {exc}", exception_code=code,
                                     element_id=self.der_id) from None
            except (ModbusClientError, SunSpecModbusClientError, OSError, TimeoutError) as exc:
                self._drop()
                raise DeviceUnreachable(f"DER {self.der_id} did not answer ({self.host}:{self.port} unit "
                                        f"{self.unit_id}) when asked to {what}: {exc}",
                                        element_id=self.der_id) from None
            except ProtocolError:
                raise
            except Exception:
                self._drop()
                raise

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    # -- reading ---------------------------------------------------------------------------------
    async def read(self) -> DerReading:
        return await self._run("report its state", self._read_sync)

    def _read_sync(self) -> DerReading:
        dev = self._device()
        for mid in (701, 702, 703, 704, 705, 706, 713):
            if mid in dev.models:
                dev.models[mid][0].read()
        return self._reading(dev)

    def _reading(self, dev: Any) -> DerReading:
        m701 = dev.models[701][0].points
        m702 = dev.models[702][0].points
        m703 = dev.models[703][0].points if 703 in dev.models else None
        c = dev.models[704][0] if 704 in dev.models else None
        w, var, v = _cv(m701["W"]), _cv(m701["Var"]), _cv(m701["LNV"])
        vnom = _cv(m702["VNom"])
        pf = None
        p_limit = p_set = q_set = None
        if c is not None:
            cp = c.points
            if cp["PFWInjEna"].value:
                g = c.groups["PFWInj"].points
                pf = (float(g["PF"].cvalue or 1.0), not g["Ext"].value)
            p_limit = _cv(cp["WMaxLimPct"]) if cp["WMaxLimPctEna"].value else None
            p_set = (_cv(cp["WSet"]) or 0.0) / 1e6 if cp["WSetEna"].value else None
            q_set = (_cv(cp["VarSet"]) or 0.0) / 1e6 if cp["VarSetEna"].value else None

        def curve(mid: int, key: str) -> Curve | None:
            if mid not in dev.models:
                return None
            m = dev.models[mid][0]
            act = m.groups["Crv"][0]
            n = int(act.points["ActPt"].value or 0)
            return tuple((float(p.points["V"].cvalue), float(p.points[key].cvalue)) for p in act.groups["Pt"][:n])

        soc = _cv(dev.models[713][0].points["SoC"]) if 713 in dev.models else None
        cat = m702["NorOpCatRtg"].value
        return DerReading(
            der_id=self.der_id,
            p_mw=None if w is None else w / 1e6,
            q_mvar=None if var is None else var / 1e6,
            v_v=v, v_pu=(v / vnom) if v is not None and vnom else None,
            connected=bool(m701["ConnSt"].value),
            enter_service=bool(m703["ES"].value) if m703 is not None else True,
            inverter_state=m701["InvSt"].value,
            p_max_mw=None if _cv(m702["WMax"]) is None else _cv(m702["WMax"]) / 1e6,  # type: ignore[operator]
            q_max_mvar=None if _cv(m702["VarMaxInj"]) is None else _cv(m702["VarMaxInj"]) / 1e6,  # type: ignore[operator]
            s_max_mva=None if _cv(m702["VAMax"]) is None else _cv(m702["VAMax"]) / 1e6,  # type: ignore[operator]
            p_limit_pct=p_limit, p_set_mw=p_set, q_set_mvar=q_set, power_factor=pf,
            volt_var=curve(705, "Var"), volt_watt=curve(706, "W"), soc_pct=soc,
            category={0: "A", 1: "B"}.get(cat) if cat is not None else None,
            volt_var_enabled=705 in dev.models and bool(dev.models[705][0].points["Ena"].value),
            volt_watt_enabled=706 in dev.models and bool(dev.models[706][0].points["Ena"].value),
        )

    # -- writing ---------------------------------------------------------------------------------
    async def apply(self, control: DerControl) -> DerReading:
        """Write ``control`` (once) and confirm it by reading the registers back."""
        return await self._run("take the control " + control.describe(), lambda: self._apply_sync(control))

    def _apply_sync(self, c: DerControl) -> DerReading:
        dev = self._device()
        m702 = dev.models[702][0]
        m702.read()
        w_max = _cv(m702.points["WMax"]) or 0.0
        ctl = dev.models[704][0]
        ctl.read()
        cp = ctl.points
        if c.p_limit_mw is not None:
            pct = 100.0 * c.p_limit_mw * 1e6 / w_max if w_max else 0.0
            cp["WMaxLimPct"].cvalue = min(100.0, round(pct, 1))
            cp["WMaxLimPctEna"].value = 1
        elif c.release_p_limit:
            cp["WMaxLimPct"].cvalue = 100.0
            cp["WMaxLimPctEna"].value = 0
        if c.q_mvar is not None:
            cp["VarSetMod"].value = 4  # VARS
            cp["VarSet"].cvalue = c.q_mvar * 1e6
            cp["VarSetEna"].value = 1
            cp["PFWInjEna"].value = 0
        if c.power_factor is not None:
            g = ctl.groups["PFWInj"].points
            g["PF"].cvalue = round(c.power_factor[0], 3)
            g["Ext"].value = 0 if c.power_factor[1] else 1
            cp["PFWInjEna"].value = 1
            cp["VarSetEna"].value = 0
        if c.storage_p_mw is not None:
            cp["WSetMod"].value = 1  # WATTS
            cp["WSet"].cvalue = c.storage_p_mw * 1e6
            cp["WSetEna"].value = 1
        ctl.write()
        if c.enter_service is not None:
            es = dev.models[703][0]
            es.points["ES"].value = 1 if c.enter_service else 0
            es.write()
        for mid, key, crv, ena in ((705, "Var", c.volt_var, c.volt_var_enabled),
                                   (706, "W", c.volt_watt, c.volt_watt_enabled)):
            if crv is None and ena is None:
                continue
            m = dev.models[mid][0]
            m.read()
            if crv is not None:
                staged = m.groups["Crv"][1]
                staged.points["ActPt"].value = len(crv)
                for i, (v, y) in enumerate(crv):
                    staged.groups["Pt"][i].points["V"].cvalue = v
                    staged.groups["Pt"][i].points[key].cvalue = y
                staged.write()
                m.points["AdptCrvReq"].value = 2
                m.points["AdptCrvReq"].write()
            if ena is not None or crv is not None:
                m.points["Ena"].value = 1 if (ena if ena is not None else True) else 0
                m.points["Ena"].write()
        reading = self._read_sync()
        self._verify(dev, c, reading, w_max)
        return reading

    def _verify(self, dev: Any, c: DerControl, r: DerReading, w_max: float) -> None:
        def mismatch(what: str, wrote: Any, got: Any) -> None:
            raise ReadBackMismatch(f"DER {self.der_id} reads back {what}={got} after {what}={wrote} was written; "
                                   f"the control is not confirmed (not resent)", element_id=self.der_id)

        if c.p_limit_mw is not None:
            want = min(100.0, round(100.0 * c.p_limit_mw * 1e6 / w_max, 1)) if w_max else 0.0
            if r.p_limit_pct is None or not math.isclose(r.p_limit_pct, want, abs_tol=0.11):
                mismatch("WMaxLimPct", want, r.p_limit_pct)
        if c.release_p_limit and c.p_limit_mw is None and r.p_limit_pct is not None:
            mismatch("WMaxLimPctEna", 0, 1)
        tol = 10.0 ** (dev.models[704][0].points["VarSet_SF"].value or 0) / 1e6
        if c.q_mvar is not None and (r.q_set_mvar is None or abs(r.q_set_mvar - c.q_mvar) > tol * 1.01):
            mismatch("VarSet", c.q_mvar, r.q_set_mvar)
        if c.power_factor is not None and (r.power_factor is None
                                           or abs(r.power_factor[0] - c.power_factor[0]) > 0.0011
                                           or r.power_factor[1] != c.power_factor[1]):
            mismatch("PFWInj", c.power_factor, r.power_factor)
        if c.storage_p_mw is not None and (r.p_set_mw is None or abs(r.p_set_mw - c.storage_p_mw) > tol * 1.01):
            mismatch("WSet", c.storage_p_mw, r.p_set_mw)
        if c.enter_service is not None and r.enter_service != c.enter_service:
            mismatch("ES", int(c.enter_service), int(r.enter_service))
        for mid, name, crv, got in ((705, "volt-var", c.volt_var, r.volt_var),
                                    (706, "volt-watt", c.volt_watt, r.volt_watt)):
            if crv is None:
                continue
            result = dev.models[mid][0].points["AdptCrvRslt"].value
            if result != 1:
                raise ReadBackMismatch(f"DER {self.der_id} did not adopt the {name} curve (AdptCrvRslt={result}, "
                                       f"1 is COMPLETED); its active curve is unchanged", element_id=self.der_id)
            if got is None or len(got) != len(crv) or any(
                    abs(a[0] - b[0]) > 0.51 or abs(a[1] - b[1]) > 0.51 for a, b in zip(got, crv, strict=True)):
                mismatch(f"{name} curve", crv, got)
        for name, ena, got in (("volt-var", c.volt_var_enabled, r.volt_var_enabled),
                               ("volt-watt", c.volt_watt_enabled, r.volt_watt_enabled)):
            if ena is not None and got != ena:
                mismatch(f"{name} Ena", int(ena), int(got))


def _exception_code(text: str) -> int:
    for tok in text.replace(":", " ").split():
        if tok.isdigit():
            return int(tok)
    return 0
