"""The project's error hierarchy.

Every error the head-end raises on purpose derives from :class:`DmsError`. Each carries a
SCREAMING_SNAKE_CASE ``code`` (it becomes GraphQL ``extensions.code`` in one place,
``server/errors.py``), the id of the element concerned where there is one, and a message that says
how to fix the problem. It lives in ``graph_schema`` because every other package depends on the
model; nothing here imports anything but the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DmsError(Exception):
    """Root of every deliberate error. ``str(err)`` is safe to show a client."""

    code = "INTERNAL"

    def __init__(self, message: str, *, element_id: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.element_id = element_id
        if code is not None:
            self.code = code

    def extensions(self) -> dict[str, object]:
        ext: dict[str, object] = {"code": self.code}
        if self.element_id is not None:
            ext["elementId"] = self.element_id
        return ext


class NotFound(DmsError):
    code = "NOT_FOUND"


class BadInput(DmsError):
    code = "BAD_INPUT"


@dataclass(frozen=True, slots=True)
class ModelProblem:
    """One thing wrong with a grid model: which element, what, and how to fix it."""

    element_id: str
    problem: str

    def __str__(self) -> str:
        return f"{self.element_id}: {self.problem}"


class InvalidModel(BadInput):
    """A model that fails validation. Lists every problem found; nothing was written."""

    code = "INVALID_MODEL"

    def __init__(self, feeder_id: str, problems: Sequence[ModelProblem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"feeder {feeder_id!r} is invalid ({len(self.problems)} problem(s)); nothing was written. "
            f"Fix these in the model file and import again:\n{lines}",
            element_id=feeder_id,
        )


class StoreUnavailable(DmsError):
    """The graph store cannot be reached, refused our credentials, or failed mid-operation."""

    code = "STORE_UNAVAILABLE"


class SolverError(DmsError):
    code = "SOLVER_ERROR"


class ActorUnavailable(DmsError):
    code = "ACTOR_UNAVAILABLE"


class ConfigError(DmsError):
    """A setting with a bad value: names the variable, the value and what is expected."""

    code = "CONFIG_ERROR"


class SeqConflict(DmsError):
    """A conditional append found another writer's record at the sequence number it expected."""

    code = "CONFLICT"
