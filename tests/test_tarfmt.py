"""Unit tests of lindifuse.tarfmt: headers against Python's tarfile, GNU tar and lindi's own
header writer; entry/index parsing; the JSON encoders against the json module; inline rules."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import tarfile

import pytest

from lindifuse.errors import FormatError
from lindifuse.formats import tarfmt
from lindifuse.formats.tarfmt import Member
from lindifuse.refs import Inline, decode_value

LONG_SPLIT = "blobs/" + "/".join(["abcdefghij" * 3] * 6) + "/0.0"  # 195 bytes, prefix-splittable
LONG_PAX = "blobs/" + "z" * 150 + "/0.0"  # a 150-byte component: ustar cannot hold it
NAMES = ["lindi.json", "blobs/acquisition/ts/data/0.0", "x" * 100, LONG_SPLIT, LONG_PAX, "é/ü/0"]


def _archive(members: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for name, data in members:
        out += tarfmt.encode_headers(name, len(data)) + data
        out += b"\0" * (tarfmt.padded(len(data)) - len(data))
    return out + tarfmt.TRAILER


# -- headers --------------------------------------------------------------------------


def test_padded():
    assert [tarfmt.padded(n) for n in (0, 1, 511, 512, 513, 1024)] == [0, 512, 512, 512, 1024, 1024]


@pytest.mark.parametrize("name", NAMES)
def test_headers_read_by_tarfile(name):
    data = bytes(range(256)) * 3
    raw = _archive([(name, data), ("second", b"x")])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        ms = tf.getmembers()
        assert [m.name for m in ms] == [name, "second"]
        m = ms[0]
        assert (m.size, m.mode, m.mtime, m.uid, m.gid, m.type) == (len(data), 0o644, 0, 0, 0, b"0")
        assert tf.extractfile(m).read() == data


@pytest.mark.parametrize("name", [n for n in NAMES if n != LONG_PAX])
def test_ustar_header_round_trip_and_tarfile_agreement(name):
    h = tarfmt.encode_header(name, 12345)
    assert len(h) == 512
    d = tarfmt.decode_header(h)
    assert (d.name, d.size, d.mode, d.mtime, d.typeflag, d.is_ustar) == (
        name,
        12345,
        0o644,
        0,
        b"0",
        True,
    )
    # tarfile's own ustar encoding of the same member decodes to the same fields
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = 12345, 0o644, 0
    theirs = tarfmt.decode_header(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    assert (theirs.name, theirs.size, theirs.mode) == (name, 12345, 0o644)
    # and our prefix/name split is tarfile's
    assert h[345:500] == ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")[345:500]


def test_long_names():
    assert tarfmt.split_ustar_name(LONG_PAX) is None
    with pytest.raises(ValueError):
        tarfmt.encode_header(LONG_PAX, 1)
    hs = tarfmt.encode_headers(LONG_PAX, 7)
    assert len(hs) == 1536  # PAX header + its records block + ustar header
    pax = tarfmt.decode_header(hs[:512])
    assert pax.typeflag == b"x"
    assert tarfmt.parse_pax(hs[512 : 512 + pax.size]) == {"path": LONG_PAX}
    assert tarfmt.decode_header(hs[1024:]).size == 7
    assert len(tarfmt.encode_headers(LONG_SPLIT, 7)) == 512


def test_huge_size_uses_pax():
    size = 9 * 2**30
    hs = tarfmt.encode_headers("big", size)
    pax = tarfmt.decode_header(hs[:512])
    assert tarfmt.parse_pax(hs[512 : 512 + pax.size])["size"] == str(size)
    with pytest.raises(ValueError):
        tarfmt.encode_header("big", size)


def test_pax_record_length_counts_itself():
    for n in range(1, 300):
        rec = tarfmt._pax_record("path", "a" * n)
        assert int(rec.split(b" ")[0]) == len(rec)


def test_decode_header_edge_cases():
    assert tarfmt.decode_header(b"\0" * 512) is None
    h = bytearray(tarfmt.encode_header("a", 1))
    h[0] = ord("b")
    with pytest.raises(FormatError, match="checksum"):
        tarfmt.decode_header(bytes(h))
    with pytest.raises(FormatError):
        tarfmt.decode_header(b"{" + b" " * 511)  # JSON, not a header
    with pytest.raises(FormatError, match="truncated"):
        tarfmt.decode_header(b"\1" * 100)
    # historic signed checksums are accepted, as tar does
    h = bytearray(tarfmt.encode_header("\xff\xfe", 3))
    signed = tarfmt._signed_checksum(h)
    h[148:156] = b"%06o\0 " % signed
    assert tarfmt.decode_header(bytes(h)).size == 3


def test_gnu_base256_size():
    h = bytearray(tarfmt.encode_header("a", 0))
    h[124:136] = b"\x80" + (5 * 2**33).to_bytes(11, "big")
    h = bytearray(tarfmt._set_checksum(h))
    assert tarfmt.decode_header(bytes(h)).size == 5 * 2**33


def test_rename_header():
    h = tarfmt.encode_header(LONG_SPLIT, 10)
    r = tarfmt.rename_header(h, ".trash/lindi.json.abcdefghij")
    d = tarfmt.decode_header(r)
    assert (d.name, d.size) == (".trash/lindi.json.abcdefghij", 10)
    assert r[345:500] == b"\0" * 155  # prefix cleared, like lindi
    assert tarfmt.decode_header(tarfmt.rename_header(r, LONG_SPLIT)).name == LONG_SPLIT
    assert tarfmt.rename_header(r, "lindi.json") == tarfmt.rename_header(h, "lindi.json")
    with pytest.raises(ValueError):
        tarfmt.rename_header(h, LONG_PAX)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_lists_and_extracts(tmp_path):
    members = [(n, (n * 7).encode()[: 100 + i * 300]) for i, n in enumerate(NAMES)]
    p = tmp_path / "a.tar"
    p.write_bytes(_archive(members))
    out = subprocess.run(["tar", "tf", str(p)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [n for n, _ in members]
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "xf", str(p), "-C", str(x)], check=True, capture_output=True)
    for n, data in members:
        assert (x / n).read_bytes() == data


def test_decodes_gnu_tar_output(tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    (tmp_path / "f").write_bytes(b"hello")
    out = tmp_path / "o.tar"
    subprocess.run(["tar", "--format=ustar", "-cf", str(out), "-C", str(tmp_path), "f"], check=True)
    h = tarfmt.decode_header(out.read_bytes()[:512])
    assert (h.name, h.size, h.is_ustar) == ("f", 5, True)


def test_matches_lindi_create_tar_header(lindi_python):
    cases = [("lindi.json", 8192), ("blobs/a/b/0.0", 123456789), ("x" * 100, 0)]
    code = (
        "import sys, json; from lindi.tar.create_tar_header import create_tar_header as c;"
        "print(json.dumps([c(n, s).hex() for n, s in json.loads(sys.argv[1])]))"
    )
    out = subprocess.run(
        [lindi_python, "-c", code, json.dumps(cases)], capture_output=True, text=True, check=True
    )
    theirs = [bytes.fromhex(h) for h in json.loads(out.stdout)]
    assert theirs == [tarfmt.encode_header(n, s) for n, s in cases]


# -- entry and index ------------------------------------------------------------------

INDEX = Member(".tar_index.json", 1536, 2048, 8192)
ENTRY = Member(".tar_entry.json", 0, 512, 1024)


def _lindi_entry(d: dict) -> bytes:
    t = json.dumps({"index": d}, indent=2, sort_keys=True).encode()
    return t + b" " * (1024 - len(t))


def test_entry_round_trip():
    raw = tarfmt.encode_entry(INDEX)
    assert raw == _lindi_entry(INDEX.as_json())  # byte-identical to lindi
    assert raw[512:] == b" " * 512  # the commit rewrites one sector
    assert tarfmt.parse_entry(raw, "f") == INDEX


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"{", "truncated"),
        (b"x" * 1024, "not valid JSON"),
        (_lindi_entry({"n": ".tar_index.json", "o": 1536, "d": 2048}), "integer"),
        (_lindi_entry({"n": "other", "o": 1536, "d": 2048, "s": 1}), "points to"),
        (_lindi_entry({"n": ".tar_index.json", "o": 1536, "d": 2048, "s": True}), "integer"),
        (_lindi_entry({"n": ".tar_index.json", "o": 1536, "d": 1536, "s": 1}), "offsets"),
        (b'{"x": 1}' + b" " * 1016, "no 'index'"),
    ],
)
def test_entry_errors(raw, match):
    with pytest.raises(FormatError, match=match) as e:
        tarfmt.parse_entry(raw, "some/file.lindi.tar")
    msg = str(e.value)
    assert msg.startswith("some/file.lindi.tar: ") and "\n" not in msg


def _index(files, **extra) -> bytes:
    return json.dumps({"files": files, **extra}, indent=2, sort_keys=True).encode() + b"   "


BASE_FILES = [
    ENTRY.as_json(),
    INDEX.as_json(),
    {"n": "lindi.json", "o": 10240, "d": 10752, "s": 8192},
]


def test_parse_index():
    got = tarfmt.parse_index(_index(BASE_FILES), INDEX, "f", 20000)
    assert got["lindi.json"] == Member("lindi.json", 10240, 10752, 8192)
    assert set(got) == {".tar_entry.json", ".tar_index.json", "lindi.json"}
    pax = {"n": "p", "o": 18944, "d": 18944 + 1536, "s": 3}  # PAX-headed member
    assert "p" in tarfmt.parse_index(_index([*BASE_FILES, pax]), INDEX, "f", None)
    dup = [*BASE_FILES, {"n": "lindi.json", "o": 19456, "d": 19968, "s": 10}]
    assert tarfmt.parse_index(_index(dup), INDEX, "f", None)["lindi.json"].s == 10  # last wins
    members, doc = tarfmt.parse_index_doc(_index(BASE_FILES, lindifuse={"a": 1}), INDEX, "f", None)
    assert doc["lindifuse"] == {"a": 1} and len(members) == 3


@pytest.mark.parametrize(
    "files, total, match",
    [
        (BASE_FILES[1:], None, "does not list .tar_entry.json"),
        ([BASE_FILES[0], BASE_FILES[2]], None, "does not list itself"),
        ([{**ENTRY.as_json(), "s": 512}, *BASE_FILES[1:]], None, "expected o=0"),
        ([BASE_FILES[0], {**INDEX.as_json(), "s": 4096}, BASE_FILES[2]], None, "says"),
        ([*BASE_FILES, {"n": "b", "o": 512, "d": 1000, "s": 1}], None, "offsets"),
        ([*BASE_FILES, {"n": "b", "o": -512, "d": 0, "s": 1}], None, "negative"),
        ([*BASE_FILES, {"n": "b", "o": 0, "d": 512}], None, "integer"),
        ([*BASE_FILES, {"o": 0, "d": 512, "s": 1}], None, "without a name"),
        ([*BASE_FILES, "x"], None, "not an object"),
        (BASE_FILES, 15000, "past the end"),
    ],
)
def test_parse_index_errors(files, total, match):
    with pytest.raises(FormatError, match=match) as e:
        tarfmt.parse_index(_index(files), INDEX, "a.lindi.tar", total)
    assert str(e.value).startswith("a.lindi.tar: ")


def test_parse_index_not_json():
    for raw in (b"nope", b"[]", b'{"files": 3}', b"\xff"):
        with pytest.raises(FormatError):
            tarfmt.parse_index(raw, INDEX, "f", None)


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "str":
        return "".join(rng.choice('ab"\\/é\n\t\x01 {}[]') for _ in range(rng.randint(0, 8)))
    if k == "int":
        return rng.randint(-(10**12), 10**12)
    if k == "float":
        return rng.choice([0.5, -1e300, 1.0, 3.14159, 1e-7])
    if k == "bool":
        return rng.random() < 0.5
    if k == "none":
        return None
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    n = rng.randint(0, 4)
    return {f"k{rng.randint(0, 99)}é": _random_json(rng, depth + 1) for _ in range(n)}


def test_dump_lindi_json_equals_json_module():
    rng = random.Random(1)
    for _ in range(300):
        refs = {}
        for i in range(rng.randint(0, 12)):
            key = f"a/b{i}/{rng.choice(['.zattrs', '.zarray', '0.0', 'ü'])}"
            refs[key] = rng.choice(
                [
                    ["./blobs/" + key, rng.randint(0, 99), rng.randint(0, 10**9)],
                    ["https://x/{{u1}}", 0, 5],
                    ["u"],
                    [],
                    [1.5, True, None],
                    "base64:AAAA",
                    'text "quoted" \u2603',
                    _random_json(rng),
                ]
            )
        rfs = {"refs": refs}
        if rng.random() < 0.5:
            rfs["version"] = 1
            rfs["templates"] = {"u1": "https://example.org/x.h5"}
            rfs["generationMetadata"] = _random_json(rng)
        if rng.random() < 0.1:
            rfs = {"refs": {}, "zzz": []}
        assert tarfmt.dump_lindi_json(rfs).decode() == json.dumps(rfs, indent=2, sort_keys=True)
    assert tarfmt.dump_lindi_json({}) == b"{}"


def test_encode_index_equals_json_module():
    ms = [ENTRY, INDEX, Member('we"ird/é', 10240, 11776, 0)]
    for extra in (None, {}, {"lindifuse": {"spares": [INDEX.as_json()]}, "a": [1, {"b": None}]}):
        doc = {"files": [m.as_json() for m in ms], **(extra or {})}
        assert tarfmt.encode_index(ms, extra).decode() == json.dumps(doc, indent=2, sort_keys=True)
    assert tarfmt.encode_index([]) == json.dumps({"files": []}, indent=2, sort_keys=True).encode()


def test_padded_json_growth_rule():
    def lindi_rule(
        n: int, initial: int = 8192
    ) -> int:  # lindi's _pad_bytes_to_leave_room_for_growth
        total = initial
        while total < n * 4:
            total *= 2
        return total

    for n in (0, 1, 2048, 2049, 3000, 100_000, 1_000_001):
        out = tarfmt.padded_json(b"x" * n)
        assert len(out) == lindi_rule(n) and out.endswith(b" " * (len(out) - n))
    assert [len(tarfmt.padded_json(b"x" * n)) for n in (2048, 2049)] == [8192, 16384]
    assert tarfmt.padded_json(b"abc", 10) == b"abc       "  # fits: overwrite in place
    assert len(tarfmt.padded_json(b"x" * 11, 10)) == 8192  # does not fit: a new member


# -- inlining -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, n, inline",
    [
        (".zattrs", 10**6, True),
        ("a/b/.zarray", 5000, True),
        ("a/zarr.json", 5000, True),
        ("a/x.json", 5000, True),
        ("a/0.0", 999, True),
        ("a/0.0", 1000, False),
        ("a/c/0/0", 0, True),
        ("a.json/0", 1000, False),
    ],
)
def test_lindi_inline_rule(key, n, inline):
    assert tarfmt.lindi_inline_rule(key, n) is inline


@pytest.mark.parametrize(
    "key, data, expected",
    [
        ("a/.zattrs", b'{"x": 1}', {"x": 1}),
        ("a/.zarray", b'{\n    "zarr_format": 2\n}', {"zarr_format": 2}),
        ("a/.zattrs", b"[1, 2]", "[1, 2]"),  # never a list: it would read as a reference
        ("a/.zattrs", b"not json", "not json"),
        ("a/0", b"plain ascii", "plain ascii"),
        ("a/0", b"\x00\xff", "base64:AP8="),
        ("a/0", "é".encode(), "base64:w6k="),  # lindi: ASCII or base64
        ("a/0", b"base64:abc", "base64:YmFzZTY0OmFiYw=="),
    ],
)
def test_inline_value(key, data, expected):
    assert tarfmt.inline_value(key, data) == expected


def test_inline_value_exact_reads_back_the_same_bytes():
    for key, data in [
        ("a/.zarray", b'{\n    "zarr_format": 2\n}'),
        ("a/.zattrs", b'{"b": 1, "a": 2}'),
        ("a/.zgroup", json.dumps({"zarr_format": 2}).encode()),
        ("a/0", bytes(range(256))),
        ("a/0", b"base64:xyz"),
        ("a/0", b""),
    ]:
        value = tarfmt.inline_value(key, data, exact=True)
        ref = decode_value(key, json.loads(json.dumps(value)))
        assert ref == Inline(data)
    assert tarfmt.inline_value("a/.zgroup", b'{"zarr_format": 2}', exact=True) == {"zarr_format": 2}
