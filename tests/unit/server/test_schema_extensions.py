"""The schema lists its own protective extensions: the document guard first, no parse/validate caches.

``security.limits.DocumentGuard`` parses and validates off the event loop and must run before any
rule that expands fragments; strawberry's ``ParserCache`` and ``ValidationCache`` would parse and
validate again on the loop, so the schema must not list them (the app used to patch this in)."""

from __future__ import annotations

from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache

from security.limits import DocumentGuard
from server.schema import build_schema
from server.settings import Settings


def _instances(schema) -> list[SchemaExtension]:
    return [f if isinstance(f, SchemaExtension) else f() for f in schema.extensions]


def test_document_guard_is_first_and_no_loop_bound_caches(tmp_path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    extensions = _instances(build_schema(settings))
    assert isinstance(extensions[0], DocumentGuard)
    assert extensions[0].limits == (settings.max_complexity, settings.max_query_depth + 1, settings.max_aliases)
    assert not [e for e in extensions if isinstance(e, ParserCache | ValidationCache)]
