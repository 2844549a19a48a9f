"""Every GraphQL example of README.md runs as written, over real HTTP, against the real server
(ArcadeDB, Ray, feeder actors, the field simulator on loopback).

What a ```graphql block may say, in GraphQL comments a reader can follow too:

- ``# role: OPERATOR``: the role of the token the block's operations are sent with (VIEWER if absent);
- ``# given: dms sim fault --feeder F --line L`` / ``# given: dms sim clear``: done to the simulator
  before the operations that follow the line;
- ``"<selectControl.id>"``: the value at that path of the latest answer with that root field (an
  answer where it is still null, e.g. a plan not yet offered, is asked again for up to 40 s);
- ``# expect: CODE`` after an operation: it must be refused with ``extensions.code`` CODE.

Every other operation must answer without errors. Operations of a block run one at a time, in order.
The curl example's query (in a shell block) runs too, with the figures the README quotes. Blocks
that change the network leave it as they found it: switches back, the fault cleared and the
return-to-normal plan approved.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from graphql import OperationDefinitionNode, parse

from tests.integration.conftest import bound_field

README = Path(__file__).resolve().parents[2] / "README.md"
DIRECTIVE = re.compile(r"#\s*(role|given|expect):\s*(.+?)\s*$", re.M)
PLACEHOLDER = re.compile(r'"<([A-Za-z_][A-Za-z0-9_.]*)>"')


@dataclass
class Op:
    text: str
    expect: str | None = None
    given: list[str] = field(default_factory=list)


@dataclass
class Block:
    line: int
    role: str
    ops: list[Op]


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in re.finditer(r"^```graphql\n(.*?)^```", text, re.S | re.M):
        body = m.group(1)
        line = text.count("\n", 0, m.start()) + 1
        defs = [d for d in parse(body).definitions if isinstance(d, OperationDefinitionNode)]
        assert defs, f"README.md:{line}: a graphql block without an operation"
        ops = [Op(body[d.loc.start:d.loc.end]) for d in defs]
        role = "VIEWER"
        for d in DIRECTIVE.finditer(body):
            kind, value, at = d.group(1), d.group(2), d.start()
            if kind == "role":
                role = value
            elif kind == "given":
                nxt = next((i for i, x in enumerate(defs) if x.loc.start > at), None)
                assert nxt is not None, f"README.md:{line}: '# given:' after the last operation"
                ops[nxt].given.append(value)
            else:
                prev = max((i for i, x in enumerate(defs) if x.loc.end <= at), default=None)
                assert prev is not None, f"README.md:{line}: '# expect:' before any operation"
                ops[prev].expect = value
        blocks.append(Block(line, role, ops))
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_the_readme_conventions_are_understood():
    assert len(BLOCKS) >= 4
    assert any(op.expect for b in BLOCKS for op in b.ops), "no '# expect:' found"
    assert any(PLACEHOLDER.search(op.text) for b in BLOCKS for op in b.ops), "no placeholder found"


@pytest.fixture(scope="module")
async def field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, ("case33bw", "cigre-mv")):
        yield field_sim


async def test_the_curl_example_answers_the_published_figures(gql):
    text = README.read_text()
    bodies = re.findall(r"-d '(\{.*?\})'", text, re.S)
    assert bodies, "the curl example is gone"
    for body in bodies:
        r = await gql(json.loads(body)["query"], role="VIEWER")
        assert "errors" not in r, r
    pf = r["data"]["feeder"]["powerFlow"]
    assert pf["source"] == "MODEL" and pf["converged"]
    assert round(pf["lossesMw"], 4) == 0.2027 and round(pf["minVmPu"], 4) == 0.9131
    assert pf["minVmBusId"] == "bus18"


def _path(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


async def _given(sim: Any, runtime: Any, command: str) -> str | None:
    """Does what a ``# given:`` line says; answers the feeder it faulted."""
    words = command.split()
    if words[:3] == ["dms", "sim", "fault"]:
        args = dict(zip(words[3::2], words[4::2], strict=True))
        feeder, line = args["--feeder"], args["--line"]
        assert sim.inject_fault(feeder, line), f"{command}: no breaker tripped"
        return feeder
    if words[:3] == ["dms", "sim", "clear"]:
        sim.clear()  # the fault repaired; switches stay where they are
        return None
    raise AssertionError(f"README: '# given: {command}' is not something this test knows how to do")


async def _run(gql, block: Block, sim: Any, runtime: Any) -> tuple[set[str], dict[str, Any]]:
    answers: dict[str, tuple[str, dict[str, Any]]] = {}  # root field -> (operation, its data)
    faulted: set[str] = set()
    for op in block.ops:
        for command in op.given:
            feeder = await _given(sim, runtime, command)
            if feeder:
                faulted.add(feeder)
        text = op.text
        for path in PLACEHOLDER.findall(op.text):
            root = path.split(".")[0]
            assert root in answers, f"README.md:{block.line}: {path} names no answer above it"
            deadline = time.monotonic() + 40
            while (value := _path(answers[root][1], path)) is None:
                assert time.monotonic() < deadline, f"README.md:{block.line}: {path} stayed null: {answers[root]}"
                await asyncio.sleep(0.5)
                again = await gql(answers[root][0], role=block.role)
                assert "errors" not in again, again
                answers[root] = (answers[root][0], again["data"])
            text = text.replace(f'"<{path}>"', json.dumps(value))
        r = await gql(text, role=block.role)
        if op.expect:
            codes = [e.get("extensions", {}).get("code") for e in r.get("errors") or []]
            assert codes[:1] == [op.expect], f"README.md:{block.line}: {op.text}\nexpected {op.expect}, got {r}"
            continue
        assert "errors" not in r and r.get("data"), f"README.md:{block.line}: {op.text}\nanswered {r}"
        for root in r["data"]:
            answers[root] = (text, r["data"])
    return faulted, {root: data[root] for root, (_, data) in answers.items()}


async def _plan_completed(gql, feeder: str, plan_id: str) -> None:
    q = 'query F($f: ID!) { fdir(feederId: $f) { lastOutcome { id kind state message } } }'
    deadline = time.monotonic() + 40
    while True:
        last = (await gql(q, {"f": feeder}, role="OPERATOR"))["data"]["fdir"]["lastOutcome"]
        if last and last["id"] == plan_id and last["state"] in ("COMPLETED", "FAILED"):
            assert last["state"] == "COMPLETED", last
            return
        assert time.monotonic() < deadline, f"plan {plan_id} on {feeder} did not complete: {last}"
        await asyncio.sleep(0.5)


async def _back_to_normal(gql, sim: Any, feeder: str, approved: dict[str, Any] | None) -> None:
    """After a fault example: the approved plan ran; clear the fault and approve the
    return-to-normal plan the feeder then offers, so it is back as built."""
    assert approved, "a fault example should approve its plan"
    await _plan_completed(gql, feeder, approved["id"])
    sim.clear(feeder)  # `dms sim clear`: repaired, switches stay where the plan left them
    q = 'query F($f: ID!) { fdir(feederId: $f) { pendingPlan { id kind } } }'
    deadline = time.monotonic() + 40
    while True:
        pending = (await gql(q, {"f": feeder}, role="OPERATOR"))["data"]["fdir"]["pendingPlan"]
        if pending and pending["kind"] == "RETURN_TO_NORMAL":
            break
        assert time.monotonic() < deadline, f"{feeder}: no return-to-normal plan offered"
        await asyncio.sleep(0.5)
    r = await gql('mutation A($f: ID!, $p: ID!) { approvePlan(feederId: $f, planId: $p) { id } }',
                  {"f": feeder, "p": pending["id"]}, role="OPERATOR")
    assert "errors" not in r, r
    await _plan_completed(gql, feeder, pending["id"])


async def _switches(gql, feeder: str) -> dict[str, bool]:
    r = await gql('query S($f: ID!) { feeder(id: $f) { switches { id isOpen } } }', {"f": feeder})
    return {s["id"]: s["isOpen"] for s in r["data"]["feeder"]["switches"]}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
async def test_readme_graphql_block_runs_as_written(gql, runtime, field, block: Block):
    before = {f: await _switches(gql, f) for f in ("case33bw", "cigre-mv")}
    faulted, answers = await _run(gql, block, field, runtime)
    for feeder in sorted(faulted):
        await _back_to_normal(gql, field, feeder, answers.get("approvePlan"))
    deadline = time.monotonic() + 15
    while True:
        after = {f: await _switches(gql, f) for f in before}
        if after == before or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    changed = {f: {s for s in before[f] if before[f][s] != after[f][s]} for f in before}
    assert after == before, f"README.md:{block.line} left switches changed: {changed}"
