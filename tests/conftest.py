"""Shared test frame: markers come from the path; a unit test may not start Ray or open sockets.

Integration fixtures (ArcadeDB over Bolt, Ray, the HTTP server, the field simulator) live in
``tests/integration/conftest.py`` and are session-scoped: they start once and are torn down at the
end, leaving no process behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(ROOT).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_stay_pure(request: pytest.FixtureRequest):
    """Fail loudly if a unit test starts Ray (the cores must not need it)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    ray_was_loaded = "ray" in sys.modules and _ray_initialized()
    yield
    if not ray_was_loaded and _ray_initialized():
        pytest.fail("a unit test started Ray; move it to tests/integration or keep the core pure")


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())
