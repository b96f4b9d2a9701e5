"""Unit tests of the --xarray view's pure logic: lindifuse.nwbdims (schema, naming) and the
conversions of lindifuse.xview. No mounts, no lindi: specs are small hand-written documents in
the shape pynwb caches them (JSON text per source, a 'namespace' document per version)."""

from __future__ import annotations

import json

import numcodecs
import numpy as np
import pytest

from lindifuse.fs.nwbdims import ArrayInfo, Schema, assign_group, choose_dims, parse_document
from lindifuse.fs.xview import (
    as_text,
    compound_dtype,
    decode_chunk,
    object_codec,
    plan_json_array,
    zarray_for_xarray,
)

HDMF_NS = {"namespaces": [{"name": "hdmf-common", "schema": [{"source": "table"}]}]}
HDMF_TABLE = {
    "datasets": [
        {"data_type_def": "Data"},
        {
            "data_type_def": "VectorData",
            "data_type_inc": "Data",
            "dims": [["dim0"], ["dim0", "dim1"]],
        },
        {"data_type_def": "VectorIndex", "data_type_inc": "VectorData", "dims": ["num_rows"]},
        {"data_type_def": "ElementIdentifiers", "data_type_inc": "Data", "dims": ["num_elements"]},
        {
            "data_type_def": "DynamicTableRegion",
            "data_type_inc": "VectorData",
            "dims": ["num_rows"],
        },
    ],
    "groups": [
        {
            "data_type_def": "DynamicTable",
            "datasets": [
                {"name": "id", "data_type_inc": "ElementIdentifiers", "dims": ["num_rows"]},
                {"data_type_inc": "VectorData", "quantity": "*"},
            ],
        }
    ],
}
CORE_NS = {
    "namespaces": [
        {
            "name": "core",
            "schema": [
                {"namespace": "hdmf-common"},
                {"source": "nwb.base"},
                {"source": "nwb.file"},
            ],
        }
    ]
}
CORE_BASE = {
    "groups": [
        {"neurodata_type_def": "NWBDataInterface"},
        {
            "neurodata_type_def": "TimeSeries",
            "neurodata_type_inc": "NWBDataInterface",
            "datasets": [
                {
                    "name": "data",
                    "dims": [["num_times"], ["num_times", "num_DIM2"]],
                    "shape": [[None], [None, None]],
                },
                {"name": "timestamps", "dims": ["num_times"]},
                {"name": "starting_time"},
            ],
        },
        {
            "neurodata_type_def": "ElectricalSeries",
            "neurodata_type_inc": "TimeSeries",
            "datasets": [
                {"name": "data", "dims": [["num_times", "num_channels"]]},
                {"name": "electrodes", "neurodata_type_inc": "DynamicTableRegion"},
            ],
        },
    ]
}
CORE_FILE = {
    "groups": [
        {
            "neurodata_type_def": "NWBFile",
            "datasets": [{"name": "file_create_date", "dims": ["num_modifications"]}],
            "groups": [
                {
                    "name": "general",
                    "datasets": [{"name": "keywords", "dims": ["num_keywords"]}],
                    "groups": [{"name": "units", "neurodata_type_inc": "Units"}],
                }
            ],
        },
        {"neurodata_type_def": "Units", "neurodata_type_inc": "DynamicTable"},
    ]
}


def docs(override: dict | None = None) -> dict[tuple[str, str, str], str]:
    d = {
        ("hdmf-common", "1.8.0", "namespace"): HDMF_NS,
        ("hdmf-common", "1.8.0", "table"): HDMF_TABLE,
        ("core", "2.7.0", "namespace"): CORE_NS,
        ("core", "2.7.0", "nwb.base"): CORE_BASE,
        ("core", "2.7.0", "nwb.file"): CORE_FILE,
    }
    d.update(override or {})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()}


@pytest.fixture(scope="module")
def schema() -> Schema:
    s = Schema.from_documents(docs())
    assert s.problems == []
    return s


def names(schema, chain, *arrays: ArrayInfo) -> dict[str, list[str]]:
    return assign_group(schema, chain, arrays)


# -- the schema -------------------------------------------------------------------------------


def test_chain_walks_inheritance_across_namespaces(schema):
    chain = schema.chain("ElectricalSeries", "core")
    defs = [s.get("neurodata_type_def") for s in chain]
    assert defs == ["ElectricalSeries", "TimeSeries", "NWBDataInterface"]
    units = schema.chain("Units", "core")  # Units (core) -> DynamicTable (hdmf-common)
    assert [s.get("neurodata_type_def") or s.get("data_type_def") for s in units] == [
        "Units",
        "DynamicTable",
    ]
    assert schema.chain("NoSuchType", "core") == []
    assert schema.includes["core"] == ["hdmf-common"]


def test_dims_by_rank_and_override_in_subtype(schema):
    ts = schema.chain("TimeSeries", "core")
    es = schema.chain("ElectricalSeries", "core")
    got = names(schema, ts, ArrayInfo("data", (10, 2)), ArrayInfo("timestamps", (10,)))
    assert got == {"data": ["num_times", "num_DIM2"], "timestamps": ["num_times"]}
    got = names(schema, ts, ArrayInfo("data", (10,)))
    assert got == {"data": ["num_times"]}
    # the subtype's own spec of 'data' wins over TimeSeries'
    assert names(schema, es, ArrayInfo("data", (10, 3)))["data"] == ["num_times", "num_channels"]
    # rank 1: ElectricalSeries lists no 1-D shape, TimeSeries does: first matching source
    assert names(schema, es, ArrayInfo("data", (10,)))["data"] == ["num_times"]
    # an inline dataset without dims takes its included type's dims
    assert names(schema, es, ArrayInfo("electrodes", (3,)))["electrodes"] == ["num_rows"]


def test_fallbacks(schema):
    ts = schema.chain("TimeSeries", "core")
    # rank matches no alternative
    assert names(schema, ts, ArrayInfo("data", (2, 3, 4)))["data"] == [
        "data_dim_0",
        "data_dim_1",
        "data_dim_2",
    ]
    # scalar spec, lindi's shape [1]
    assert names(schema, ts, ArrayInfo("starting_time", (1,)))["starting_time"] == [
        "starting_time_dim_0"
    ]
    # a true scalar (rank 0) gets no names
    assert names(schema, ts, ArrayInfo("starting_time", ()))["starting_time"] == []
    # not in the spec, no own type
    assert names(schema, ts, ArrayInfo("extra", (4,)))["extra"] == ["extra_dim_0"]
    # no schema at all
    assert names(None, [], ArrayInfo("data", (5, 2)))["data"] == ["data_dim_0", "data_dim_1"]
    # unknown own type
    got = names(schema, [], ArrayInfo("x", (5,), neurodata_type="Nope", namespace="core"))
    assert got["x"] == ["x_dim_0"]


def test_own_type_and_untyped_subgroups(schema):
    units = schema.chain("Units", "core")
    got = names(
        schema,
        units,
        ArrayInfo("id", (3,), neurodata_type="ElementIdentifiers", namespace="hdmf-common"),
        ArrayInfo("spike_times", (6,), neurodata_type="VectorData", namespace="hdmf-common"),
        ArrayInfo("spike_times_index", (3,), neurodata_type="VectorIndex"),
    )
    # 'id' is named by DynamicTable's inline spec (num_rows), not ElementIdentifiers' own dims
    assert got == {"id": ["num_rows"], "spike_times": ["dim0"], "spike_times_index": ["num_rows"]}
    root = schema.chain("NWBFile", "core")
    assert names(schema, root, ArrayInfo("file_create_date", (1,)))["file_create_date"] == [
        "num_modifications"
    ]
    general = schema.subgroup_chain(root, "general")
    assert names(schema, general, ArrayInfo("keywords", (2,)))["keywords"] == ["num_keywords"]
    # a named subgroup that includes a type gets that type's chain too
    sub_units = schema.subgroup_chain(general, "units")
    assert [s.get("neurodata_type_def") for s in sub_units[1:2]] == ["Units"]
    assert schema.subgroup_chain(root, "nope") == []


def test_unique_names_within_a_group(schema):
    units = schema.chain("Units", "core")
    vd = {"neurodata_type": "VectorData", "namespace": "hdmf-common"}
    got = names(
        schema,
        units,
        ArrayInfo("b_col", (6,), **vd),
        ArrayInfo("a_col", (3,), **vd),
        ArrayInfo("c_col", (3,), **vd),
        ArrayInfo("d_col", (7,), **vd),
    )
    # name order: a_col keeps dim0 (3), c_col shares it, b_col and d_col get suffixes
    assert got == {
        "a_col": ["dim0"],
        "b_col": ["dim0_1"],
        "c_col": ["dim0"],
        "d_col": ["dim0_2"],
    }


def test_existing_dimensions_are_kept_and_count(schema):
    ts = schema.chain("TimeSeries", "core")
    got = names(
        schema,
        ts,
        ArrayInfo("data", (10, 2), existing=["num_times", "ch"]),
        ArrayInfo("timestamps", (11,)),
    )
    assert "data" not in got  # it has names: left alone
    assert got == {"timestamps": ["num_times_1"]}  # num_times is 10 in this group already


def test_same_name_twice_in_one_array():
    s = Schema.from_documents(
        docs(
            {
                ("core", "2.7.0", "nwb.base"): {
                    "groups": [
                        {
                            "neurodata_type_def": "Sq",
                            "datasets": [{"name": "m", "dims": ["n", "n"]}],
                        }
                    ]
                }
            }
        )
    )
    assert names(s, s.chain("Sq", "core"), ArrayInfo("m", (3, 3)))["m"] == ["n", "n_1"]


def test_broken_documents_and_newest_version():
    d = docs({("core", "2.7.0", "nwb.file"): "{not json", ("core", "2.6.0", "nwb.base"): "{x"})
    s = Schema.from_documents(d)
    # only the newest version of a namespace is read: the broken 2.6.0 document is ignored
    assert len(s.problems) == 1 and "specifications/core/2.7.0/nwb.file" in s.problems[0]
    assert s.chain("TimeSeries", "core")
    assert s.chain("NWBFile", "core") == []
    s = Schema.from_documents(docs({("core", "2.7.0", "nwb.base"): "[1, 2]"}))
    assert any("not a mapping" in p for p in s.problems)


def test_parse_document_and_choose_dims():
    assert parse_document('{"a": 1}') == {"a": 1}
    assert choose_dims([[["a", "b"]], [["c"]]], "x", 1) == ["c"]
    assert choose_dims([], "x", 2) == ["x_dim_0", "x_dim_1"]


# -- conversions ------------------------------------------------------------------------------

JSON2 = {
    "id": "json2",
    "allow_nan": True,
    "check_circular": True,
    "encoding": "utf-8",
    "ensure_ascii": True,
    "indent": None,
    "separators": [",", ":"],
    "skipkeys": False,
    "sort_keys": True,
    "strict": True,
}
BLOSC = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}


def json2_meta(n: int) -> dict:
    return {
        "chunks": [n],
        "compressor": BLOSC,
        "dtype": "|O",
        "fill_value": 0,
        "filters": [JSON2],
        "order": "C",
        "shape": [n],
        "zarr_format": 2,
    }


def encode_json2(values: list) -> bytes:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    raw = numcodecs.get_codec(JSON2).encode(arr)
    return bytes(numcodecs.get_codec(BLOSC).encode(raw))


REF = {"_REFERENCE": {"object_id": "x", "path": "/acquisition/ts", "source": "."}}


def test_json_strings_and_references_become_vlen_utf8():
    meta = json2_meta(4)
    conv = plan_json_array(meta, {})
    assert conv.zarray["filters"] == [{"id": "vlen-utf8"}]
    assert conv.zarray["compressor"] is None and conv.zarray["fill_value"] is None
    assert conv.zarray["shape"] == [4] and conv.zarray["dtype"] == "|O"
    out = conv.convert(encode_json2(["a", REF, None, 3]))
    assert list(numcodecs.VLenUTF8().decode(out)) == ["a", "/acquisition/ts", "", "3"]


def test_numeric_compound_becomes_structured():
    attrs = {"_COMPOUND_DTYPE": [["x", "int32"], ["y", "float64"]]}
    conv = plan_json_array(json2_meta(3), attrs)
    assert conv.zarray["dtype"] == [["x", "<i4"], ["y", "<f8"]]
    assert conv.zarray["filters"] is None
    out = conv.convert(encode_json2([[0, 0.0], [1, 0.5], [2, 1.0]]))
    arr = np.frombuffer(out, dtype=[("x", "<i4"), ("y", "<f8")])
    assert arr["x"].tolist() == [0, 1, 2] and arr["y"].tolist() == [0.0, 0.5, 1.0]


def test_compound_with_references_becomes_json_text():
    attrs = {"_COMPOUND_DTYPE": [["idx_start", "int32"], ["count", "int32"], ["ts", "<REFERENCE>"]]}
    conv = plan_json_array(json2_meta(2), attrs)
    assert conv.zarray["filters"] == [{"id": "vlen-utf8"}]
    out = conv.convert(encode_json2([[0, 10, REF], [10, 5, REF]]))
    rows = [json.loads(s) for s in numcodecs.VLenUTF8().decode(out)]
    assert rows == [
        {"idx_start": 0, "count": 10, "ts": "/acquisition/ts"},
        {"idx_start": 10, "count": 5, "ts": "/acquisition/ts"},
    ]


def test_small_helpers():
    assert compound_dtype([["a", "<REFERENCE>"]]) is None
    assert compound_dtype("nope") is None
    assert compound_dtype([["a", "uint8"], ["b", ">f4"]]) == np.dtype([("a", "u1"), ("b", "<f4")])
    assert as_text([REF, 1]) == '["/acquisition/ts",1]'
    assert object_codec({"dtype": "<i2"}) is None
    assert object_codec({"dtype": "|O", "filters": [JSON2]}) == "json2"
    assert object_codec({"dtype": "|O", "filters": None}) == ""
    m = {"dtype": "<i2", "fill_value": 0}
    assert zarray_for_xarray(m) == {"dtype": "<i2", "fill_value": None}
    assert zarray_for_xarray({"fill_value": ""})["fill_value"] is None
    assert zarray_for_xarray({"fill_value": 0.0})["fill_value"] is None
    keep = {"dtype": "<f8", "fill_value": "NaN"}
    assert zarray_for_xarray(keep) is keep
    keep = {"dtype": "<i2", "fill_value": -1}
    assert zarray_for_xarray(keep) is keep
    meta = {"dtype": "<U3", "compressor": BLOSC, "filters": None}
    raw = numcodecs.get_codec(BLOSC).encode(np.array(["abc"], dtype="<U3").tobytes())
    assert decode_chunk(meta, bytes(raw)).tolist() == ["abc"]
