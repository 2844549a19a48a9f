"""A report as data: title, period, method notes, sources, summary figures, tables and charts.

Renderers (:mod:`server.reports.render`) turn one :class:`ReportDoc` into CSV, XLSX and PDF; all
three carry the same figures and the same ``content_sha256``: the SHA-256 of the canonical JSON of
everything in the report except the time it was generated, so the same inputs give the same hash
(a report is reproducible), whenever and however often it is produced.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Cell = str | int | float | bool | None


@dataclass(frozen=True)
class Table:
    name: str  # machine name: CSV section, XLSX sheet (<= 31 characters)
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""


@dataclass(frozen=True)
class Chart:
    title: str
    x: tuple[str, ...]
    series: tuple[tuple[str, tuple[float, ...]], ...]
    y_label: str
    kind: str = "bar"  # bar | line
    hline: tuple[str, float] | None = None  # a labelled threshold line (e.g. T_MED)


@dataclass(frozen=True)
class ReportDoc:
    kind: str
    title: str
    period_start: datetime
    period_end: datetime
    generated_at: datetime
    method_notes: tuple[str, ...]
    sources: tuple[str, ...]
    summary: tuple[tuple[str, Cell], ...]
    tables: tuple[Table, ...] = ()
    charts: tuple[Chart, ...] = ()
    no_data: str | None = None  # why the report holds no figures, stated in it
    meta: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> bytes:
        body = {
            "kind": self.kind, "title": self.title, "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(), "method_notes": list(self.method_notes),
            "sources": list(self.sources), "summary": [[k, _norm(v)] for k, v in self.summary],
            "tables": [{"name": t.name, "title": t.title, "columns": list(t.columns), "note": t.note,
                        "rows": [[_norm(c) for c in r] for r in t.rows]} for t in self.tables],
            "charts": [{"title": c.title, "x": list(c.x), "y": c.y_label, "kind": c.kind,
                        "series": [[n, [_norm(v) for v in vs]] for n, vs in c.series],
                        "hline": None if c.hline is None else [c.hline[0], _norm(c.hline[1])]} for c in self.charts],
            "no_data": self.no_data,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def content_sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


def _norm(v: Any) -> Any:
    """Floats rounded to 9 significant digits: the hash must not depend on the last bits of a sum's
    order of additions."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return float(f"{v:.9g}")
    return v


def fmt(v: Cell, digits: int = 4) -> str:
    """A cell as people read it (PDF, CSV): floats to ``digits`` significant decimals."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v.is_integer():
            return str(int(v))
        if 0.999 < abs(v) < 1:  # availability (ASAI): the digits that matter are the late ones
            return f"{v:.7f}"
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)
