"""Unit tests of the dandiset logic without a network or FUSE: SOURCE parsing, version choice,
pagination, the listing cache, the tree of a listing and grafting an asset's keys."""

from __future__ import annotations

import json

import pytest
import trio

from lindifuse.errors import RefError, SourceError
from lindifuse.fs.dandiset import build_tree
from lindifuse.fs.tree import Tree
from lindifuse.sources.dandi import DandiResolver
from lindifuse.sources.dandiset import (
    DEFAULT_API,
    Asset,
    DandiTarget,
    ListingCache,
    api_host,
    api_root,
    assets_from_rows,
    assets_url,
    choose_version,
    index_url,
    list_dandiset,
    parse_page,
    parse_target,
)


@pytest.mark.parametrize(
    "source, want",
    [
        ("dandi://000939", DandiTarget("000939")),
        ("dandi://000939@draft", DandiTarget("000939", "draft")),
        ("dandi://000939@0.240101.1234", DandiTarget("000939", "0.240101.1234")),
        ("dandi://000939@0.240101.1234/sub-1/", DandiTarget("000939", "0.240101.1234", "sub-1")),
        ("dandi://000939/sub-1/ses-2", DandiTarget("000939", None, "sub-1/ses-2")),
        ("dandi://dandi/000939@draft", DandiTarget("000939", "draft", "", "dandi")),
        ("https://dandiarchive.example/dandiset/000939", DandiTarget("000939")),
        ("https://x.example/dandiset/000939/draft", DandiTarget("000939", "draft")),
        (
            "https://x.example/dandiset/000939/0.240101.1234/files?location=sub-1%2Fses-2",
            DandiTarget("000939", "0.240101.1234", "sub-1/ses-2"),
        ),
        ("https://x.example/#/dandiset/000939", DandiTarget("000939")),
        ("https://x.example/data/file.nwb", None),
        ("/local/file.lindi.json", None),
    ],
)
def test_parse_target(source, want):
    assert parse_target(source) == want


@pytest.mark.parametrize(
    "source, msg",
    [
        ("dandi://939", "six-digit"),
        ("dandi://000939@latest", "bad version 'latest'"),
        ("dandi://000939x", "expected '@VERSION' or '/path'"),
        ("dandi://000939/a/../b", "'.' and '..'"),
        ("https://x.example/dandiset/000939/v1", "bad version 'v1'"),
    ],
)
def test_parse_target_errors(source, msg):
    with pytest.raises(SourceError) as e:
        parse_target(source)
    assert msg in str(e.value) and source in str(e.value)


def test_api_root_and_host(monkeypatch):
    monkeypatch.delenv("LINDIFUSE_DANDI_API", raising=False)
    assert api_root(None) == DEFAULT_API
    monkeypatch.setenv("LINDIFUSE_DANDI_API", "http://127.0.0.1:8000/api/")
    assert api_root(None) == "http://127.0.0.1:8000/api"
    assert api_root("http://h:1/x") == "http://h:1/x"
    assert api_root(None, "other") == "http://127.0.0.1:8000/api"
    monkeypatch.delenv("LINDIFUSE_DANDI_API")
    assert api_root(None, "DANDI") == DEFAULT_API
    with pytest.raises(SourceError) as e:
        api_root(None, "staging")
    assert "unknown DANDI instance 'staging'" in str(e.value) and "--dandi-api" in str(e.value)
    assert api_host("http://127.0.0.1:8000/api") == "127.0.0.1:8000"
    assert DandiResolver(hosts=(api_host("http://127.0.0.1:8000/api"),)).is_api(
        "http://127.0.0.1:8000/api/assets/x/download/"
    )


def test_choose_version():
    pub = {"most_recent_published_version": {"version": "0.1.2"}, "draft_version": {}}
    assert choose_version(pub, None, "d") == ("0.1.2", True)
    assert choose_version({"most_recent_published_version": None}, None, "d") == ("draft", False)
    assert choose_version(pub, "draft", "d") == ("draft", False)
    assert choose_version(pub, "0.0.1", "d") == ("0.0.1", True)
    with pytest.raises(SourceError):
        choose_version([], None, "d")


def test_urls_and_template():
    u = assets_url("http://a/api", "000001", "draft", "sub 1")
    assert u.startswith("http://a/api/dandisets/000001/versions/draft/assets/?order=path")
    assert "metadata=false" in u and "page_size=1000" in u and "path=sub+1%2F" in u
    t = "http://i/{dandiset}/{version}/{asset_id}.json"
    assert index_url(t, "000001", "draft", "abc") == "http://i/000001/draft/abc.json"
    with pytest.raises(SourceError) as e:
        index_url("http://i/{asset}", "000001", "draft", "abc")
    assert "--lindi-url-template" in str(e.value)


def test_pages_and_rows():
    rows, nxt = parse_page({"results": [], "next": "http://n"}, "w")
    assert rows == [] and nxt == "http://n"
    assert parse_page({"results": [], "next": None}, "w")[1] is None
    with pytest.raises(SourceError):
        parse_page({"detail": "x"}, "w")
    raw = [
        {"asset_id": "1", "path": "a/x.nwb", "size": 5, "blob": "b1", "zarr": None},
        {"asset_id": "2", "path": "ab/y.bin", "size": 7, "blob": "b2", "zarr": None},
        {"asset_id": "3", "path": "a/z.zarr", "size": 9, "blob": None, "zarr": "z"},
    ]
    got = assets_from_rows(raw, "a", "w")
    assert [(a.path, a.kind) for a in got] == [("x.nwb", "nwb"), ("z.zarr", "zarr")]
    assert [a.kind for a in assets_from_rows(raw, "", "w")] == ["nwb", "file", "zarr"]
    assert got[0].validator == "dandi:b1:5"
    with pytest.raises(SourceError):
        assets_from_rows([{"path": "x"}], "", "w")


def test_listing_cache_roundtrip(tmp_path):
    c = ListingCache(str(tmp_path))
    assert c.get_listing("api", "000001", "1.2.3", "") is None
    assets = [Asset("1", "a/x.nwb", 5, "b", None), Asset("2", "z", 1, None, "zz")]
    c.put_listing("api", "000001", "1.2.3", "", assets)
    assert c.get_listing("api", "000001", "1.2.3", "") == assets
    assert c.get_listing("api", "000001", "1.2.3", "a") is None
    c.put_choice("api", "000001", "1.2.3")
    assert c.get_choice("api", "000001") == "1.2.3"
    c.put_index("http://i/x", b'{"refs": {}}')
    assert c.get_index("http://i/x") == b'{"refs": {}}'


class FakeHttp:
    """Answers get_doc from a dict url -> (status, doc); counts requests."""

    def __init__(self, answers: dict[str, tuple[int, object]], api_key: str | None = None):
        self.answers = answers
        self.asked: list[str] = []
        self.dandi = DandiResolver(api_key=api_key)

    async def get_doc(self, url: str, method: str = "GET") -> tuple[int, bytes]:
        self.asked.append(url)
        if url not in self.answers:
            raise RefError(f"{url}: ConnectError")
        status, doc = self.answers[url]
        return status, json.dumps(doc).encode()


API = "http://api.test/api"


def _pages(n: int, per: int, version: str = "1.0.0") -> dict[str, tuple[int, object]]:
    base = assets_url(API, "000001", version)
    out: dict[str, tuple[int, object]] = {}
    rows = [
        {"asset_id": str(i), "path": f"s{i // 3}/f{i}.nwb", "size": i, "blob": str(i), "zarr": None}
        for i in range(n)
    ]
    for p in range(0, n, per):
        url = base if p == 0 else f"{base}&page={p // per + 1}"
        nxt = f"{base}&page={p // per + 2}" if p + per < n else None
        out[url] = (200, {"results": rows[p : p + per], "next": nxt})
    return out


def test_list_dandiset_paginates_and_caches(tmp_path):
    answers = {
        f"{API}/dandisets/000001/": (
            200,
            {"most_recent_published_version": {"version": "1.0.0"}},
        ),
        **_pages(25, 10),
    }
    http = FakeHttp(answers)
    cache = ListingCache(str(tmp_path))
    got = trio.run(list_dandiset, DandiTarget("000001"), API, http, cache)
    assert (got.version, got.published, len(got.assets), got.from_cache) == (
        "1.0.0",
        True,
        25,
        False,
    )
    assert len(http.asked) == 4  # the dandiset + 3 pages
    http.asked.clear()
    again = trio.run(list_dandiset, DandiTarget("000001", "1.0.0"), API, http, cache)
    assert again.from_cache and again.assets == got.assets and http.asked == []
    # without a version and the API down: the version chosen before, from the cache
    down = FakeHttp({})
    offline = trio.run(list_dandiset, DandiTarget("000001"), API, down, cache)
    assert offline.version == "1.0.0" and offline.from_cache


def test_list_dandiset_draft_is_not_cached(tmp_path):
    answers = {
        f"{API}/dandisets/000001/": (200, {"most_recent_published_version": None}),
        **_pages(3, 10, "draft"),
    }
    http = FakeHttp(answers)
    cache = ListingCache(str(tmp_path))
    for _ in range(2):
        got = trio.run(list_dandiset, DandiTarget("000001"), API, http, cache)
        assert (got.version, got.published, got.from_cache) == ("draft", False, False)
    assert len(http.asked) == 4


@pytest.mark.parametrize(
    "status, key, msg",
    [
        (404, None, "dandiset 000001: not found (HTTP 404)"),
        (401, None, "DANDI_API_KEY"),
        (403, "k", "access denied by the DANDI API (HTTP 403)"),
        (500, None, "answered HTTP 500"),
    ],
)
def test_list_dandiset_errors(status, key, msg):
    http = FakeHttp({f"{API}/dandisets/000001/": (status, {})}, api_key=key)
    with pytest.raises(SourceError) as e:
        trio.run(list_dandiset, DandiTarget("000001"), API, http, None)
    assert msg in str(e.value)


def test_list_dandiset_loop_and_down():
    base = assets_url(API, "000001", "draft")
    http = FakeHttp(
        {
            f"{API}/dandisets/000001/": (200, {}),
            base: (200, {"results": [], "next": base}),
        }
    )
    with pytest.raises(SourceError) as e:
        trio.run(list_dandiset, DandiTarget("000001", "draft"), API, http, None)
    assert "loops" in str(e.value)
    with pytest.raises(SourceError) as e:
        trio.run(list_dandiset, DandiTarget("000001"), API, FakeHttp({}), None)
    assert "does not answer" in str(e.value)


def test_build_tree_and_graft():
    assets = [
        Asset("1", "a/x.nwb", 10, "b1"),
        Asset("2", "a/y.bin", 20, "b2"),
        Asset("3", "a/z.ome.zarr", 0, None, "z"),
        Asset("4", "a/x.nwb/inner.bin", 5, "b4"),  # inside an NWB asset: refused
        Asset("5", "../evil", 1, "b5"),
        Asset("6", "a/y.bin", 20, "b6"),  # same path twice
    ]
    tree, views, skipped = build_tree(assets, API)
    assert skipped == 4
    a = tree.by_key("a")
    assert sorted(a.children) == ["x.nwb", "y.bin"]
    x = a.children["x.nwb"]
    assert x.is_dir and x.children == {} and views[x.inode].asset.asset_id == "1"
    y = a.children["y.bin"]
    assert not y.is_dir and y.size == 20 and y.extra.loc.where == f"{API}/assets/2/download/"
    conflicts = tree.graft(x, [".zgroup", "acq/.zgroup", "acq/ts/.zarray", "acq/ts/0", "acq"])
    assert conflicts == ["acq"]
    assert tree.by_key("a/x.nwb/acq/ts/0") is not None
    assert sorted(x.children) == [".zgroup", "acq"]


def test_tree_graft_into_empty_tree():
    t = Tree()
    d = t.ensure_dir("p/q")
    assert t.graft(d, ["k", "g/k2"]) == []
    assert t.by_key("p/q/g/k2").key == "p/q/g/k2" and t.nfiles == 2
