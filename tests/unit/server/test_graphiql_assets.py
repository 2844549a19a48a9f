"""GraphiQL works without internet: the IDE page references only this server's own assets (#18.6).

Strawberry's page loads React and GraphiQL from unpkg.com and runs an inline script, so the demo's
GraphiQL never loaded on a machine without internet and the page's CSP had to allow the CDN and
'unsafe-inline'. The page is now ``server/static/graphiql/index.html`` and its assets are vendored
beside it. The app is driven in process (no lifespan, no socket); the GraphiQL page itself needs no
store, no Ray and no token."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from server.app import GRAPHIQL_DIR, create_app
from server.settings import Settings

BASE = "http://dms.test"
PAGE = f"{BASE}/graphql"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.urls.append(a["src"] or "")
            else:
                self._in_script_without_src = True
        elif tag == "link" and a.get("href"):
            self.urls.append(a["href"] or "")
        elif a.get("src"):
            self.urls.append(a["src"] or "")
        if any(k.startswith("on") for k in a):
            self.inline_scripts += 1  # event-handler attributes are inline script too

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def _app(graphiql: bool, tmp_path):
    app = create_app(Settings.from_env({}, data_dir=tmp_path, graphiql=graphiql, introspection=graphiql))
    app.state.services.auth = object()  # what the lifespan sets; a GET without a token never calls it
    return app


@pytest.fixture
async def client(tmp_path):
    transport = httpx.ASGITransport(app=_app(True, tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        yield c


async def test_ide_page_loads_only_same_origin_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    assert parser.inline_scripts == 0
    assert {u.rsplit("/", 1)[-1] for u in parser.urls} == {
        "graphiql.min.css", "ide.css", "react.production.min.js", "react-dom.production.min.js",
        "graphiql.min.js", "start.js"}
    assert not re.search(r"https?://|//[a-z]", page.text), "the page must name no other host"
    for ref in parser.urls:
        url = urljoin(PAGE, ref)
        assert urlsplit(url).netloc == urlsplit(BASE).netloc, url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[url[url.rindex("."):]]
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert asset.content == (GRAPHIQL_DIR / url.rsplit("/", 1)[-1]).read_bytes()


async def test_ide_page_policy_allows_no_cdn_and_no_inline_script(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";") if d.strip())
    assert csp["script-src"] == "'self'"
    assert "unpkg" not in page.headers["content-security-policy"]
    assert not re.search(r"https?:|\*", page.headers["content-security-policy"])
    assert csp["frame-ancestors"] == "'none'"


def test_vendored_bundle_is_small_and_licensed() -> None:
    total = sum(p.stat().st_size for p in GRAPHIQL_DIR.iterdir())
    assert total < 5_000_000, f"{total} bytes vendored"
    for licence in ("LICENSE.graphiql", "LICENSE.react", "LICENSE.react-dom"):
        assert "MIT License" in (GRAPHIQL_DIR / licence).read_text()


async def test_no_static_route_when_graphiql_is_off(tmp_path) -> None:
    transport = httpx.ASGITransport(app=_app(False, tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        assert (await c.get("/static/graphiql/graphiql.min.js")).status_code == 404
        page = await c.get("/graphql", headers={"accept": "text/html"})
        assert "graphiql" not in page.text.lower()
