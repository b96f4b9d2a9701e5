"""Property-based tests (hypothesis) of the parsers and encoders (issue 9, item 5): any input
gives a result or the project's own error (FormatError / RefError / ValueError where the
contract says so), never another exception; encode -> decode round-trips.

Covered: references (decode_value, validation, templates, kerchunk ``gen``), key normalization,
the padding rule, tar headers (ustar and PAX), ``.tar_entry.json``, the index and ``lindi.json``
codecs, padded JSON members and lindi's growth rule, lindi's inline rule, tree construction and
edits (st_nlink bookkeeping), merge planning, Retry-After, host rules, free-space admission.

``HYPOTHESIS_PROFILE=long`` runs 20x more examples per property (see tests/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lindifuse.archive.space import admits, reserve_for
from lindifuse.errors import FormatError, LindiError, RefError
from lindifuse.formats import tarfmt
from lindifuse.fs.fetch import plan_merges
from lindifuse.fs.tree import Tree
from lindifuse.refs import (
    Inline,
    Range,
    ReferenceSet,
    decode_value,
    expand_templates,
    normalize_key,
    padded_chunk_size,
)
from lindifuse.sources.http import HostRule, parse_retry_after

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- strategies -------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
key_parts = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=6)
keys = st.lists(key_parts, min_size=1, max_size=4).map("/".join)
weird_keys = keys | st.text(max_size=20)
targets = st.sampled_from(
    ["http://h/x", "https://h/y.h5", "/abs/file", "./blobs/a", "rel.bin", "{{u}}/z", "{{nope}}"]
) | st.text(max_size=12)
ref_values = (
    st.text(max_size=20)
    | st.text(alphabet=string.ascii_letters + "+/=", max_size=20).map(lambda s: "base64:" + s)
    | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)
    | st.tuples(targets, st.integers(-5, 2**40), st.integers(-5, 2**40)).map(list)
    | st.tuples(targets).map(list)
    | json_values
)


# -- references ----------------------------------------------------------------------------------

# Keys made of the parts that matter to normalization: empty, ".", "..", a leading "/", NUL.
tricky_keys = st.lists(
    st.sampled_from(["", ".", "..", "a", ".zattrs", "..x", "x.", "\0", "0.1"]), max_size=4
).map("/".join) | st.lists(st.sampled_from(["/", ".", "a", "\0"]), max_size=6).map("".join)


@given(st.lists(weird_keys | tricky_keys, max_size=12))
def test_keys_checked_in_bulk_as_one_by_one(ks):
    from lindifuse.refs import _all_canonical

    assert _all_canonical(ks) == all(normalize_key(k) == k for k in ks)


@given(st.dictionaries(weird_keys | tricky_keys, ref_values, max_size=8))
def test_reference_set_checked_in_bulk_as_one_by_one(refs):
    """The bulk check (``_all_canonical``, ``_plain_values``) accepts exactly what the check of
    each key and value accepts, with the same result."""
    from lindifuse.refs import _validate

    try:
        want = _validate(json.loads(json.dumps(refs)).items(), {}, "f")
    except FormatError:
        with pytest.raises(FormatError):
            ReferenceSet.from_json({"refs": refs}, "f")
        return
    got = ReferenceSet.from_json({"refs": refs}, "f")
    assert got.refs == want[0]
    assert got.rejected == [k for k in want[1] if k]


@given(
    st.dictionaries(weird_keys, ref_values, max_size=8),
    st.dictionaries(st.text(max_size=4), st.text(max_size=8) | st.integers(), max_size=3),
    json_values,
)
def test_reference_sets_validate_or_raise_format_error(refs, templates, version):
    doc = {"refs": refs, "templates": templates}
    if version is not None and not isinstance(version, (dict, list)):
        doc["version"] = version
    try:
        rset = ReferenceSet.from_json(doc, "f.json")
    except FormatError as e:
        assert str(e).startswith("f.json:") and "\n" not in str(e)
        return
    for key, value in rset.refs.items():
        assert normalize_key(key) == key
        try:
            ref = decode_value(key, value)
        except RefError:
            continue
        if isinstance(ref, Range):
            # validation guarantees the templates used exist
            expand_templates(ref.target, rset.templates)
            assert ref.offset >= 0 and (ref.size is None or ref.size >= 0)


@given(json_values)
def test_reference_file_of_any_shape(obj):
    with contextlib.suppress(FormatError):
        ReferenceSet.from_json(obj, "x")


@given(st.text(max_size=30), ref_values)
def test_decode_value_gives_a_ref_or_ref_error(key, value):
    try:
        ref = decode_value(key, value)
    except RefError as e:
        assert "\n" not in str(e)
        return
    except (IndexError, TypeError):
        # only for values the validator (ReferenceSet.from_json) refuses first
        assert isinstance(value, list)
        return
    assert isinstance(ref, Inline | Range)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "key": st.sampled_from(["k/{{i}}", "{{i}}.{{j}}", "{% bad", "x"]),
                "url": st.sampled_from(["http://h/{{i}}", "{{u}}", "{{missing}}", "/p"]),
                "dimensions": st.dictionaries(
                    st.sampled_from(["i", "j"]),
                    st.fixed_dictionaries({"stop": st.integers(-2, 4)})
                    | st.lists(st.integers(0, 3), max_size=3)
                    | json_scalars,
                    max_size=2,
                ),
            },
            optional={
                "offset": st.sampled_from(["{{i}}", "x", 3]),
                "length": st.sampled_from(["10", "{{j}}", "-1"]),
            },
        )
        | json_values,
        max_size=3,
    )
)
def test_kerchunk_gen_expands_or_raises_format_error(gen):
    try:
        rset = ReferenceSet.from_json({"refs": {}, "gen": gen, "templates": {"u": "http://t"}}, "g")
    except FormatError:
        return
    for k in rset.refs:
        assert normalize_key(k) == k


@given(st.text(max_size=40))
def test_normalized_keys_never_escape(key):
    k = normalize_key(key)
    if k is not None:
        assert "\0" not in k and not k.startswith("/")
        assert all(p not in ("", ".", "..") for p in k.split("/"))
        assert normalize_key(k) == k


@given(
    st.dictionaries(
        st.sampled_from(["dtype", "chunks", "compressor", "filters"]),
        json_values | st.sampled_from(["<f8", "|u1", "<i2", "O", "|S4"]),
        max_size=4,
    )
)
def test_padding_rule_never_raises(zarray):
    got = padded_chunk_size(zarray)
    assert got is None or (isinstance(got, int) and got >= 0)


# -- tar format ------------------------------------------------------------------------------------

member_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    min_size=1,
    max_size=300,
)


@given(st.binary(min_size=0, max_size=600))
def test_decode_header_of_any_block(block):
    try:
        h = tarfmt.decode_header(block)
    except FormatError:
        return
    assert h is None or h.size >= 0


@given(member_names, st.integers(0, 2**40))
def test_headers_round_trip(name, size):
    raw = tarfmt.encode_headers(name, size)
    assert len(raw) % 512 == 0
    last = tarfmt.decode_header(raw[-512:])
    assert last is not None
    pax: dict[str, str] = {}
    if len(raw) > 512:  # a PAX header carries the name and/or a size over 8 GiB
        first = tarfmt.decode_header(raw[:512])
        assert first is not None and first.typeflag == b"x"
        pax = tarfmt.parse_pax(raw[512 : 512 + first.size])
    assert pax.get("path", last.name) == name
    assert int(pax.get("size", last.size)) == size


@given(st.binary(max_size=1100))
def test_parse_entry_of_any_bytes(raw):
    try:
        m = tarfmt.parse_entry(raw, "a.tar")
    except FormatError as e:
        assert str(e).startswith("a.tar:")
        return
    assert m.name == tarfmt.INDEX_NAME


@given(st.integers(0, 10**9), st.integers(1, 10**9))
def test_entry_round_trip(block, s):
    o = block * 512
    idx = tarfmt.Member(tarfmt.INDEX_NAME, o, o + 512, s)
    assert tarfmt.parse_entry(tarfmt.encode_entry(idx), "a") == idx


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=30).filter(lambda n: "\0" not in n), st.integers(1, 10**6)
        ),
        max_size=10,
        unique_by=lambda t: t[0],
    )
)
def test_index_round_trip(items):
    names = [n for n, _ in items if n not in (tarfmt.ENTRY_NAME, tarfmt.INDEX_NAME)]
    sizes = dict(items)
    pos = 0
    members = []
    for n in [tarfmt.ENTRY_NAME, tarfmt.INDEX_NAME, *names]:
        s = tarfmt.ENTRY_SIZE if n == tarfmt.ENTRY_NAME else sizes.get(n, 4096)
        members.append(tarfmt.Member(n, pos, pos + 512, s))
        pos += 512 + tarfmt.padded(s)
    raw = tarfmt.encode_index(members)
    entry = members[1]
    got = tarfmt.parse_index(raw, entry, "t", pos + 1024)
    assert got == {m.name: m for m in members}


@given(st.binary(max_size=400), st.integers(0, 10**6))
def test_parse_index_of_any_bytes(raw, total):
    entry = tarfmt.Member(tarfmt.INDEX_NAME, 1536, 2048, max(1, len(raw)))
    with contextlib.suppress(FormatError):
        tarfmt.parse_index(raw, entry, "t", total)


@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    st.dictionaries(keys, ref_values, max_size=6),
)
def test_lindi_json_dump_round_trip_and_padding(extra, refs):
    rfs = {**extra, "refs": refs}
    text = tarfmt.dump_lindi_json(rfs)
    assert json.loads(text) == json.loads(json.dumps(rfs))
    padded = tarfmt.padded_json(text)
    assert len(padded) >= len(text) and json.loads(padded) == json.loads(text)
    assert padded[len(text) :].strip(b" \n") == b""
    assert tarfmt.grown_size(len(text)) >= len(text)


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_grown_size_is_monotonic(a, b):
    lo, hi = sorted((a, b))
    assert tarfmt.grown_size(lo) <= tarfmt.grown_size(hi)


@given(keys, st.binary(max_size=3000))
def test_inline_values_round_trip(key, data):
    if not tarfmt.lindi_inline_rule(key, len(data)):
        return
    value = tarfmt.inline_value(key, data, exact=True)
    ref = decode_value(key, value)
    assert isinstance(ref, Inline) and ref.data == data


# -- tree ----------------------------------------------------------------------------------------------


def _recount(tree: Tree) -> None:
    files = 0
    for node in tree.nodes.values():
        if node.children is None:
            files += 1
            assert tree.nlink(node) == 1
        else:
            subdirs = sum(1 for c in node.children.values() if c.children is not None)
            assert tree.nlink(node) == 2 + subdirs, node
            for name, c in node.children.items():
                assert c.parent is node and c.name == name
    assert files == tree.nfiles


@given(st.lists(weird_keys, max_size=30))
def test_tree_from_any_keys(raw_keys):
    ks = [k for k in (normalize_key(k) for k in raw_keys) if k is not None]
    tree = Tree.from_keys(ks)
    _recount(tree)
    for k in ks:
        node = tree.by_key(k)
        assert node is not None
        assert node.children is None or k in tree.conflicts


@given(st.lists(weird_keys, max_size=30), st.integers(1, 4))
def test_lazy_tree_from_any_keys_is_the_tree_from_keys(raw_keys, min_files):
    ks = list(dict.fromkeys(k for k in (normalize_key(k) for k in raw_keys) if k is not None))
    want = Tree.from_keys(ks)
    tree = Tree.from_keys_lazy(ks, min_files=min_files)
    assert sorted(tree.conflicts) == sorted(want.conflicts)
    assert tree.nfiles + tree.npending == want.nfiles
    tree.fill_all()
    _recount(tree)
    assert {n.key: n.is_dir for n in tree.nodes.values()} == {
        n.key: n.is_dir for n in want.nodes.values()
    }


ops = st.lists(
    st.tuples(
        st.sampled_from(["file", "dir", "rm", "mv"]),
        st.integers(0, 50),
        st.integers(0, 50),
        key_parts,
    ),
    max_size=40,
)


@given(st.lists(keys, max_size=10), ops)
def test_tree_edits_keep_the_bookkeeping(initial, edits):
    tree = Tree.from_keys(initial)
    for op, a, b, name in edits:
        nodes = list(tree.nodes.values())
        node = nodes[a % len(nodes)]
        dirs = [n for n in nodes if n.children is not None]
        target = dirs[b % len(dirs)]
        if op in ("file", "dir"):
            if name in target.children:
                continue
            (tree.add_file if op == "file" else tree.add_dir)(target, name)
        elif op == "rm":
            if node is tree.root or node.children:
                continue
            tree.remove(node)
        else:
            if node is tree.root or name in target.children:
                continue
            anc = target
            while anc is not None and anc is not node:
                anc = anc.parent
            if anc is node:
                continue  # into itself
            tree.move(node, target, name)
        _recount(tree)


# -- fetch planning, HTTP details, free space -------------------------------------------------------


@given(
    st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 10**6)), max_size=40),
    st.integers(0, 10**6),
    st.integers(1, 2 * 10**7),
)
def test_plan_merges_covers_every_range(ranges, gap, max_size):
    spans = plan_merges(ranges, gap, max_size)
    covered = [r for s in spans for r in s.ranges]
    assert sorted(covered) == sorted(set(ranges))
    for s in spans:
        assert s.start == min(o for o, _ in s.ranges)
        assert s.end == max(o + n for o, n in s.ranges)
        assert s.size <= max_size or len(s.ranges) == 1
    starts = [s.start for s in spans]
    assert starts == sorted(starts)


@given(st.text(max_size=40) | st.none())
def test_retry_after_of_any_header(value):
    got = parse_retry_after(value)
    assert got is None or got >= 0


@given(st.lists(st.text(max_size=20), max_size=4), st.text(max_size=40))
def test_host_rules_never_raise(patterns, url):
    HostRule(patterns).allows(url)
    HostRule(patterns).allows("http://" + url)


@given(
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(-(2**30), 2**30),
    st.integers(0, 2**30),
)
def test_space_admission(free, pending, growth, json_bytes):
    reserve = reserve_for(json_bytes)
    ok = admits(free, pending, growth, reserve)
    if growth <= 0:
        assert ok
    else:
        assert ok == (pending + growth + reserve <= free)
        if ok:
            assert admits(free + 1, pending, growth, reserve)
            assume(growth > 1)
            assert admits(free, pending, growth - 1, reserve)


def test_errors_are_lindi_errors():
    assert issubclass(FormatError, LindiError) and issubclass(RefError, LindiError)


@pytest.mark.parametrize("name", ["a" * 100, "d/" * 60 + "x", "é" * 60])
def test_long_and_unicode_names_round_trip(name):
    test_headers_round_trip.hypothesis.inner_test(name, 123)  # type: ignore[attr-defined]
