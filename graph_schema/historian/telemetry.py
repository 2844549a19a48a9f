"""The historian's telemetry buffer: batches kept as columns of plain values, tables when flushed.

The scan hands every device batch (a tuple of ``protocols.base.PointValue``) to
:meth:`TelemetryBuffer.add`, which keeps five column tuples of it (point ids, values, qualities,
source and received times: five C-level ``map`` passes, no Python code per value) and lets the
``PointValue`` objects go. That matters more than it looks: a buffer holding the objects
themselves (tens of thousands for a flush interval) made the cyclic garbage collector walk them
again and again, measured at about 10 % of the scan's CPU; tuples of strings, floats and datetimes
are untracked by the collector after its first look. :func:`TelemetryBuffer.to_table` (in the
writing thread) turns the columns into one ``measurement`` Arrow table (numpy, pyarrow kernels) and
keeps values by exception there, vectorised: a sample is kept when its value or quality differs
from the point's previous sample, or when it is the first of a new ``heartbeat_s`` window (UTC
epoch aligned), so an unchanged value is still stored once per window. The buffer is bounded in
values; beyond it the oldest values are dropped and counted.

pyarrow and numpy are imported by this module: the historian application imports it when it starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa

from graph_schema.historian.timestamps import epoch_us

_point_id, _value, _quality = attrgetter("point_id"), attrgetter("value"), attrgetter("quality")
_source_ts, _received_ts = attrgetter("source_ts"), attrgetter("received_ts")
TS = pa.timestamp("us", tz="UTC")
# One device batch as columns: point ids, values, qualities, source times, received times.
Batch = tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]
# per point: the last sample seen (value or NaN, value is null, quality, heartbeat window)
State = dict[str, tuple[float, bool, str, int]]


class TelemetryBuffer:
    def __init__(self, points: Mapping[str, tuple[str, str]], *, heartbeat_s: float, max_values: int) -> None:
        self._points = dict(points)  # point id -> (element id, quantity)
        self._hb_us = max(1, round(heartbeat_s * 1e6))
        self.max_values = max_values
        self._batches: deque[Batch] = deque()
        self._n = 0
        self.dropped = 0  # values dropped because the buffer was full (the sink was down)
        self.state: State = {}

    def __len__(self) -> int:
        return self._n

    def add(self, values: Sequence[Any]) -> None:
        """Keep a batch of ``PointValue`` as five columns (see the module's docstring). Drops the
        oldest values beyond the bound."""
        if values:
            self._batches.append((tuple(map(_point_id, values)), tuple(map(_value, values)),
                                  tuple(map(_quality, values)), tuple(map(_source_ts, values)),
                                  tuple(map(_received_ts, values))))
            self._n += len(values)
            if self._n > self.max_values:
                self._trim()

    def _trim(self) -> None:
        while self._n > self.max_values:
            first = self._batches[0]
            size, over = len(first[0]), self._n - self.max_values
            if over >= size:
                self._batches.popleft()
                self._n -= size
                self.dropped += size
            else:
                self._batches[0] = tuple(c[over:] for c in first)  # type: ignore[assignment]
                self._n -= over
                self.dropped += over

    def batches(self) -> list[Batch]:
        return list(self._batches)

    def take(self) -> list[Batch]:
        out, self._batches, self._n = list(self._batches), deque(), 0
        return out

    def requeue(self, batches: Iterable[Batch]) -> None:
        """Put batches that could not be written back in front (oldest dropped beyond the bound)."""
        batches = list(batches)
        self._batches.extendleft(reversed(batches))
        self._n += sum(len(b[0]) for b in batches)
        self._trim()

    def _meta(self, pid: str) -> tuple[str, str]:
        """Element and quantity of a point: the model's, or from a point map's id ``<feeder>/<element>/<KIND>``."""
        meta = self._points.get(pid)
        if meta is None:
            parts = pid.rsplit("/", 2)
            meta = self._points[pid] = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        return meta

    def to_table(self, batches: Sequence[Batch], state: State | None = None) -> tuple[pa.Table, State]:
        """The ``measurement`` rows of ``batches`` kept by exception against ``state`` (default: the
        buffer's), ordered by point then arrival, and the state after them (commit it with
        ``buffer.state.update(new)`` once the rows are written)."""
        from graph_schema.historian.writer import SCHEMAS

        schema = SCHEMAS["measurement"]
        if not any(b[0] for b in batches):
            return schema.empty_table(), {}

        def column(i: int) -> list[Any]:
            return list(chain.from_iterable(b[i] for b in batches))

        state = self.state if state is None else state
        pid_arr = pa.array(column(0), pa.string()).dictionary_encode()
        dictionary: list[str] = pid_arr.dictionary.to_pylist()
        codes = pid_arr.indices.to_numpy(zero_copy_only=False)
        value_arr = pa.array(column(1), pa.float64())
        is_null = value_arr.is_null().to_numpy(zero_copy_only=False)
        value = value_arr.fill_null(np.nan).to_numpy(zero_copy_only=False)
        quality_arr = pa.array(column(2), pa.string()).dictionary_encode()
        q_dict: list[str] = quality_arr.dictionary.to_pylist()
        q_codes = quality_arr.indices.to_numpy(zero_copy_only=False)
        received = _us_batches([b[4] for b in batches])
        source_cols = [b[3] for b in batches]
        source = _us_batches(source_cols)
        source_null = np.concatenate([np.fromiter((x is None for x in c), bool, len(c)) if None in c
                                      else np.zeros(len(c), bool) for c in source_cols]) \
            if any(None in c for c in source_cols) else None
        window = received // self._hb_us

        order = np.argsort(codes, kind="stable")  # by point, then arrival
        c, v, nl, q, w = codes[order], value[order], is_null[order], q_codes[order], window[order]
        first = np.ones(len(c), bool)
        first[1:] = c[1:] != c[:-1]
        pv, pn, pq, pw = np.empty_like(v), np.empty_like(nl), np.empty_like(q), np.empty_like(w)
        pv[1:], pn[1:], pq[1:], pw[1:] = v[:-1], nl[:-1], q[:-1], w[:-1]
        known = ~first
        q_code = {name: i for i, name in enumerate(q_dict)}
        for i in np.flatnonzero(first):  # a point's first sample here: compare with its last one before
            prev = state.get(dictionary[c[i]])
            if prev is not None:
                pv[i], pn[i], pq[i], pw[i] = prev[0], prev[1], q_code.get(prev[2], -1), prev[3]
                known[i] = True
        same_value = (nl & pn) | (~nl & ~pn & ((v == pv) | (np.isnan(v) & np.isnan(pv))))
        keep = ~known | ~same_value | (q != pq) | (w != pw)
        last = np.ones(len(c), bool)
        last[:-1] = c[:-1] != c[1:]
        new_state: State = {dictionary[c[i]]: (float(v[i]), bool(nl[i]), q_dict[q[i]], int(w[i]))
                            for i in np.flatnonzero(last)}

        idx = pa.array(order[keep])
        kept_codes = pa.array(c[keep])
        metas = [self._meta(p) for p in dictionary]
        elements = pa.array([m[0] for m in metas], pa.string())
        quantities = pa.array([m[1] for m in metas], pa.string())
        table = pa.Table.from_arrays([
            pid_arr.dictionary.take(kept_codes), elements.take(kept_codes), quantities.take(kept_codes),
            value_arr.take(idx), quality_arr.take(idx).cast(pa.string()),
            pa.array(source, TS, mask=source_null).take(idx), pa.array(received, TS).take(idx),
        ], schema=schema)
        return table, new_state


def _us_batches(columns: Sequence[tuple[datetime | None, ...]]) -> np.ndarray:
    """Epoch microseconds of the timestamp columns of batches, concatenated. A device batch usually
    carries one stamp object for all its values: ``tuple.count`` (a C loop that matches by
    identity first) finds that, and the batch becomes one ``np.full``."""
    parts = []
    for col in columns:
        if not col:
            continue
        first = col[0]
        if col.count(first) == len(col):
            parts.append(np.full(len(col), epoch_us(first) or 0, np.int64))
        else:
            parts.append(_us_column(list(col)))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _us_column(stamps: list[datetime | None]) -> np.ndarray:
    """Epoch microseconds of timestamps (None as 0; a batch shares a few distinct stamps, each
    converted once)."""
    us = {ts: epoch_us(ts) or 0 for ts in dict.fromkeys(stamps)}
    return np.fromiter(map(us.__getitem__, stamps), np.int64, len(stamps))
