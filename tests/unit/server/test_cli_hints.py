"""What the `dms` banner tells a user to run must work from their shell."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from server.cli import _dms_command


def test_dms_is_named_by_its_path_when_not_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dms here
    script = Path(sys.executable).parent / "dms"
    hint = _dms_command()
    if script.exists():
        assert Path(hint).resolve() == script.resolve()
        assert hint != "dms"
    else:
        assert hint.endswith("-m server.cli")


def test_plain_dms_when_this_installation_is_on_path(monkeypatch):
    script = Path(sys.executable).parent / "dms"
    if not script.exists():
        return  # not installed as a console script (running from a source tree): covered above
    monkeypatch.setenv("PATH", str(script.parent) + os.pathsep + os.environ.get("PATH", ""))
    assert _dms_command() == "dms"
