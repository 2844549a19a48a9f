"""Relay connections: PageInfo carries hasNextPage, hasPreviousPage, startCursor and endCursor
(Relay cursor connections specification) wherever a connection is built."""

from __future__ import annotations

from server.schema.relay import connection, decode_cursor, encode_cursor


def test_first_page_has_start_and_end_cursor_and_no_previous_page():
    page = connection([(9, "c"), (8, "b"), (7, "a")], 2, after=None)
    info = page.page_info
    assert [e.node for e in page.edges] == ["c", "b"]
    assert info.has_next_page is True and info.has_previous_page is False
    assert decode_cursor(info.start_cursor) == 9 and decode_cursor(info.end_cursor) == 8


def test_a_page_after_a_cursor_has_a_previous_page():
    page = connection([(7, "a")], 2, after=encode_cursor(8))
    info = page.page_info
    assert info.has_next_page is False and info.has_previous_page is True
    assert info.start_cursor == info.end_cursor == encode_cursor(7)


def test_an_empty_page_has_no_cursors():
    info = connection([], 5, after=encode_cursor(1)).page_info
    assert info.start_cursor is None and info.end_cursor is None
    assert info.has_next_page is False and info.has_previous_page is True


def test_every_connection_in_the_schema_has_the_relay_page_info():
    from server.schema import build_schema
    from server.settings import Settings

    gql = build_schema(Settings.from_env({}))._schema
    page_info = gql.type_map["PageInfo"]
    assert {"hasNextPage", "hasPreviousPage", "startCursor", "endCursor"} <= set(page_info.fields)
    connections = [n for n in gql.type_map if n.endswith("Connection")]
    assert connections and all(gql.type_map[n].fields["pageInfo"].type.of_type is page_info for n in connections)
