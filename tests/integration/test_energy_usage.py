"""energyUsage over real HTTP: a CUSTOMER token sees its own meter's kWh and is FORBIDDEN any other
meter; an operator-side token gets BAD_INPUT for an unknown meter. Meter rows are written into the
session's historian for a day long past, so no other test's data is touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from graph_schema.historian.ami import account_of

F = "case33bw"
MINE = f"{F}/load1/m0"
OTHER = f"{F}/load1/m1"
DAY = datetime(2020, 1, 6, tzinfo=UTC)
Q = timedelta(minutes=15)
ENERGY = """query($m: ID!, $s: DateTime!, $e: DateTime!, $b: Int) {
  energyUsage(meterId: $m, start: $s, end: $e, bucketS: $b) { start end kwh intervals } }"""


def _write_day(settings: Any) -> None:
    from server.ami_ingest import write_named_parts

    rows = [("meter", (mid, "load1", DAY + i * Q, DAY + (i + 1) * Q, 0.5 if mid == MINE else 9.0))
            for mid in (MINE, OTHER) for i in range(96)]
    write_named_parts(settings.historian_root, F, rows, "test-energy-usage")  # same part each time


def _customer_token(settings: Any, account: str | None) -> str:
    from security.tokens import LocalSigningKey, mint_token

    return mint_token(LocalSigningKey(settings.data_dir), role="CUSTOMER", sub="customer-1", ttl_s=600,
                      issuer=settings.auth_issuer, audience=settings.auth_audience, customer_account=account)


async def test_customer_sees_own_meter_only(settings: Any, gql: Any) -> None:
    _write_day(settings)
    token = _customer_token(settings, account_of(MINE))
    v = {"m": MINE, "s": DAY.isoformat(), "e": (DAY + timedelta(days=1)).isoformat(), "b": 21_600}
    r = await gql(ENERGY, v, token=token)
    assert "errors" not in r, r
    assert [(b["kwh"], b["intervals"]) for b in r["data"]["energyUsage"]] == [(12.0, 24)] * 4

    r = await gql(ENERGY, {**v, "m": OTHER}, token=token)
    assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", r
    r = await gql(ENERGY, {**v, "m": f"{F}/nope/m0"}, token=token)  # unknown, and not its own: FORBIDDEN
    assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", r
    r = await gql(ENERGY, v, token=_customer_token(settings, None))  # no account claim
    assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", r


async def test_operator_side_reads_any_meter_and_unknown_is_bad_input(settings: Any, gql: Any) -> None:
    _write_day(settings)
    v = {"m": OTHER, "s": DAY.isoformat(), "e": (DAY + timedelta(hours=1)).isoformat(), "b": None}
    r = await gql(ENERGY, v, role="VIEWER")
    assert "errors" not in r, r
    assert [b["kwh"] for b in r["data"]["energyUsage"]] == [9.0] * 4
    r = await gql(ENERGY, {**v, "m": f"{F}/load1/m999"}, role="VIEWER")
    assert r["errors"][0]["extensions"]["code"] == "BAD_INPUT" and "unknown meter" in r["errors"][0]["message"], r
    r = await gql(ENERGY, v, role=None)
    assert r["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", r
