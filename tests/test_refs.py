"""Unit tests of lindifuse.refs: reference forms, validation, templates, kerchunk v1 ``gen``,
key normalization and rejection, and lindi's zero-padding rule (pure logic, no I/O)."""

from __future__ import annotations

import base64
import json

import pytest

from lindifuse.errors import FormatError, RefError
from lindifuse.refs import (
    Inline,
    Range,
    ReferenceSet,
    decode_value,
    expand_gen,
    expand_templates,
    is_chunk_name,
    normalize_key,
    padded_chunk_size,
)

# -- decode_value: every form ---------------------------------------------------------------


def test_text_is_utf8():
    assert decode_value("k", "plain") == Inline(b"plain")
    assert decode_value("k", "\u00b5\U0001f600") == Inline("\u00b5\U0001f600".encode())
    assert decode_value("k", "") == Inline(b"")


def test_base64():
    raw = bytes(range(256))
    assert decode_value("k", "base64:" + base64.b64encode(raw).decode()) == Inline(raw)
    assert decode_value("k", "base64:") == Inline(b"")


def test_text_that_merely_contains_base64_is_text():
    assert decode_value("k", "xbase64:AAAA") == Inline(b"xbase64:AAAA")
    assert decode_value("k", "BASE64:AAAA") == Inline(b"BASE64:AAAA")


def test_invalid_base64_is_a_ref_error_naming_the_key():
    with pytest.raises(RefError, match="g/x/0.*base64"):
        decode_value("g/x/0", "base64:abcde")


@pytest.mark.parametrize(
    "obj",
    [
        {"zarr_format": 2},
        {"b": 1, "a": [1, 2.5, None, True, False], "u": "\u00b5"},
        {"nested": {"z": {}, "a": []}, "f": 1e-300},
        {},
    ],
)
def test_json_object_is_json_dumps(obj):
    # byte-identical to lindi: json.dumps with default separators, key order kept, ascii escapes
    assert decode_value("k", obj) == Inline(json.dumps(obj).encode())


def test_json_object_keeps_document_order():
    obj = json.loads('{"z": 1, "a": 2}')
    assert decode_value("k", obj).data == b'{"z": 1, "a": 2}'


def test_ranges():
    assert decode_value("k", ["/f", 10, 20]) == Range("/f", 10, 20)
    assert decode_value("k", ["http://h/x", 0, 0]) == Range("http://h/x", 0, 0)
    assert decode_value("k", ["{{u}}", 5, 1]) == Range("{{u}}", 5, 1)
    assert decode_value("k", ["./blobs/a", 3, 4]) == Range("./blobs/a", 3, 4)


def test_whole_target():
    assert decode_value("k", ["https://h/x.bin"]) == Range("https://h/x.bin", 0, None)


@pytest.mark.parametrize("value", [1, 2.5, None, True])
def test_unsupported_value(value):
    with pytest.raises(RefError, match="unsupported"):
        decode_value("k", value)


# -- ReferenceSet.from_json: validation -----------------------------------------------------


def rs(refs, **top):
    return ReferenceSet.from_json({"refs": refs, **top}, "src.lindi.json")


def test_minimal_and_extra_members_kept():
    s = rs({".zgroup": {"zarr_format": 2}}, version=1, generationMetadata={"x": 1})
    assert s.refs == {".zgroup": {"zarr_format": 2}}
    assert s.rejected == []
    assert s.templates == {}
    assert s.extra == {"version": 1, "generationMetadata": {"x": 1}}


@pytest.mark.parametrize(
    "doc, match",
    [
        ([], "not a reference file system"),
        ("text", "not a reference file system"),
        ({"version": 1}, "no 'refs'"),
        ({"refs": []}, "'refs' must be an object"),
        ({"refs": {}, "version": 2}, "unsupported reference file system version 2"),
        ({"refs": {}, "templates": {"a": 1}}, "templates"),
        ({"refs": {}, "templates": ["a"]}, "templates"),
    ],
)
def test_bad_documents(doc, match):
    with pytest.raises(FormatError, match=match) as e:
        ReferenceSet.from_json(doc, "src.lindi.json")
    assert "src.lindi.json" in str(e.value)


@pytest.mark.parametrize(
    "value, match",
    [
        (["/f", 0, -1], "negative size -1"),
        (["/f", -5, 10], "negative offset -5"),
        (["/f", 0], "reference must be"),
        (["/f", 0, 1, 2], "reference must be"),
        ([], "reference must be"),
        (["", 0, 1], "non-empty string"),
        ([5, 0, 1], "non-empty string"),
        (["/f", "0", 1], "integers"),
        (["/f", 0, 1.5], "integers"),
        (["/f", True, 1], "integers"),
        (["{{nope}}", 0, 1], r"unknown template \{\{nope\}\}"),
        (["{{nope}}"], r"unknown template \{\{nope\}\}"),
        (["http://h/{{u}}/{{v}}", 0, 1], r"unknown template \{\{v\}\}"),
        (17, "reference must be"),
        (None, "reference must be"),
    ],
)
def test_bad_references_name_file_and_key(value, match):
    with pytest.raises(FormatError, match=match) as e:
        rs({".zgroup": {}, "a/b/0": value}, templates={"u": "x"})
    msg = str(e.value)
    assert "src.lindi.json" in msg and "'a/b/0'" in msg
    assert "\n" not in msg


def test_templates_valid():
    s = rs({"a": ["{{u}}", 0, 1], "b": ["{{ u }}/x", 2, 3]}, templates={"u": "http://h/f"})
    assert s.templates == {"u": "http://h/f"}


def test_expand_templates():
    t = {"u1": "https://h/a.nwb", "dir": "/data"}
    assert expand_templates("{{u1}}", t) == "https://h/a.nwb"
    assert expand_templates("{{ dir }}/x/{{dir}}.bin", t) == "/data/x//data.bin"
    assert expand_templates("/plain/path", t) == "/plain/path"
    assert expand_templates("{single}", t) == "{single}"


# -- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, norm",
    [
        (".zgroup", ".zgroup"),
        ("a/b/.zarray", "a/b/.zarray"),
        ("a/b/0.1.2", "a/b/0.1.2"),
        ("/a/b", "a/b"),
        ("/.zgroup", ".zgroup"),
        ("a/..b/c", "a/..b/c"),
        ("a/b.", "a/b."),
        ("a b/\u00b5", "a b/\u00b5"),
        ("", None),
        ("/", None),
        ("//a", None),
        ("a//b", None),
        ("a/", None),
        ("a/./b", None),
        ("./a", None),
        ("a/../b", None),
        ("..", None),
        ("a/..", None),
        ("a\0b", None),
    ],
)
def test_normalize_key(key, norm):
    assert normalize_key(key) == norm


def test_key_normalization_and_rejection_in_a_set():
    s = rs(
        {
            "/lead": "1",
            "ok/x": "2",
            "a//b": "3",
            "../up": "4",
            "x/./y": "5",
            "nul\0": "6",
            ".zattrs": {},
        }
    )
    assert s.refs == {"lead": "1", "ok/x": "2", ".zattrs": {}}
    assert sorted(s.rejected) == sorted(["a//b", "../up", "x/./y", "nul\0"])


def test_canonical_set_keeps_its_dict():
    refs = {".zgroup": {"zarr_format": 2}, "a/0": ["/f", 0, 1]}
    assert rs(refs).refs is refs


# -- kerchunk v1 gen ------------------------------------------------------------------------


def test_gen_with_ranges_and_offsets():
    doc = {
        "version": 1,
        "templates": {"u": "http://h/data.bin"},
        "gen": [
            {
                "key": "x/{{i}}.{{j}}",
                "url": "{{u}}",
                "offset": "{{(i * 2 + j) * 100}}",
                "length": "100",
                "dimensions": {"i": {"stop": 2}, "j": {"start": 0, "stop": 2}},
            }
        ],
        "refs": {"x/.zarray": {"chunks": [1, 1]}},
    }
    s = ReferenceSet.from_json(doc, "g.json")
    assert s.refs == {
        "x/.zarray": {"chunks": [1, 1]},
        "x/0.0": ["http://h/data.bin", 0, 100],
        "x/0.1": ["http://h/data.bin", 100, 100],
        "x/1.0": ["http://h/data.bin", 200, 100],
        "x/1.1": ["http://h/data.bin", 300, 100],
    }
    assert "gen" not in s.extra


def test_gen_list_dimension_step_and_whole_targets():
    gen = [
        {
            "key": "f/{{name}}/{{k}}",
            "url": "http://h/{{name}}-{{k}}.bin",
            "dimensions": {"name": ["a", "b"], "k": {"start": 1, "stop": 6, "step": 2}},
        }
    ]
    got = dict(expand_gen(gen, {}, "g.json"))
    assert got == {f"f/{n}/{k}": [f"http://h/{n}-{k}.bin"] for n in ("a", "b") for k in (1, 3, 5)}


def test_refs_override_gen():
    doc = {
        "gen": [{"key": "k/{{i}}", "url": "/f", "dimensions": {"i": {"stop": 2}}}],
        "refs": {"k/1": "explicit"},
    }
    s = ReferenceSet.from_json(doc, "g.json")
    assert s.refs == {"k/0": ["/f"], "k/1": "explicit"}


@pytest.mark.parametrize(
    "gen, match",
    [
        ({"key": "x"}, "'gen' must be a list"),
        ([{"key": "x/{{i}}", "url": "/f"}], r"gen\[0\]"),
        ([{"key": "x/{{i}}", "url": "/f", "dimensions": {"i": {"start": 0}}}], r"gen\[0\]"),
        (
            [{"key": "x/{{i}}", "url": "/f", "offset": 0, "dimensions": {"i": {"stop": 1}}}],
            "'offset' and 'length' go together",
        ),
        ([{"key": "x/{{ j }}", "url": "/f", "dimensions": {"i": {"stop": 1}}}], r"gen\[0\]"),
        ([{"key": "x/{{i}", "url": "/f", "dimensions": {"i": {"stop": 1}}}], r"gen\[0\]"),
        (
            [
                {
                    "key": "x/{{i}}",
                    "url": "/f",
                    "offset": "{{i - 5}}",
                    "length": "1",
                    "dimensions": {"i": {"stop": 1}},
                }
            ],
            "negative offset",
        ),
    ],
)
def test_bad_gen(gen, match):
    with pytest.raises(FormatError, match=match) as e:
        ReferenceSet.from_json({"version": 1, "gen": gen, "refs": {}}, "g.json")
    assert "g.json" in str(e.value)


# -- padding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ok",
    [
        ("0", True),
        ("12", True),
        ("0.1.2", True),
        ("3.0", True),
        ("-1", True),
        (".zarray", False),
        ("", False),
        ("0.", False),
        (".0", False),
        ("a", False),
        ("0.x", False),
        ("1..2", False),
        ("0.1.partial", False),
    ],
)
def test_is_chunk_name(name, ok):
    assert is_chunk_name(name) is ok


def meta(dtype, chunks, compressor=None, filters=None):
    return {"dtype": dtype, "chunks": chunks, "compressor": compressor, "filters": filters}


@pytest.mark.parametrize(
    "m, size",
    [
        (meta("<f8", [1250]), 10000),
        (meta("<i2", [16, 8]), 256),
        (meta("|u1", [11]), 11),
        (meta(">u4", [2, 3, 4]), 96),
        (meta("<f4", [10], filters=[]), 40),  # an empty filter list is no filter
    ],
)
def test_uncompressed_numeric_arrays_pad(m, size):
    assert padded_chunk_size(m) == size


@pytest.mark.parametrize(
    "m",
    [
        meta("<f8", [1250], compressor={"id": "zlib", "level": 4}),
        meta("<i4", [100], compressor={"id": "zstd", "level": 1}),
        meta("<i4", [100], compressor={"id": "blosc", "cname": "lz4"}),
        meta("<i2", [16, 8], filters=[{"id": "shuffle"}, {"id": "zlib"}]),
        meta("|O", [3]),
        meta("<U12", [1]),
        meta("|S5", [4]),
        meta("|b1", [8]),
        meta("<c16", [8]),
        meta("[('x', '<i4')]", [5]),
        {"dtype": "<f8"},  # no chunks
        {"chunks": [4]},  # no dtype
        meta("not a dtype", [4]),
    ],
)
def test_compressed_filtered_and_non_numeric_arrays_do_not_pad(m):
    assert padded_chunk_size(m) is None
