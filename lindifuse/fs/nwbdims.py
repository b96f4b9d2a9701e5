"""Dimension names for NWB arrays, from the NWB schema a file carries inside itself.

Pure logic, no I/O: the caller hands in the texts of the embedded specification documents
(``specifications/<namespace>/<version>/<source>``) and, per group, the arrays with their shapes;
this module answers with an ``_ARRAY_DIMENSIONS`` list per array (used by ``--xarray``).

The rules (also in docs/semantics.md):

1. The group's spec: the type named by its ``neurodata_type`` attribute (looked up in the
   namespace named by its ``namespace`` attribute, then in the namespaces that one includes,
   then anywhere), with every ancestor through ``neurodata_type_inc`` / ``data_type_inc``. A
   group without a type uses the spec of the subgroup of that name in its parent's spec
   (``general`` inside ``NWBFile``, ``extracellular_ephys`` inside ``general``, ...).
2. An array's candidate ``dims``, first match wins: the dataset of that name in the group's spec
   (most derived type first); the type that dataset spec includes; the array's own
   ``neurodata_type`` and its ancestors. ``dims`` is one list of names or a list of
   alternatives; the alternative whose length equals the array's rank is taken.
3. Otherwise (no spec, unknown type, no dims, rank mismatch, a scalar spec for lindi's shape-[1]
   ``_SCALAR`` datasets): ``<array>_dim_<i>``.
4. Within one group a name must mean one length: arrays are visited in name order, the first
   length seen for a name keeps it, each other length gets ``<name>_1``, ``<name>_2``, ... (a
   free name). The same name twice in one array: the second gets a suffix too. Names already in
   an array's ``_ARRAY_DIMENSIONS`` are kept and count as seen first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TYPE_DEF_KEYS = ("neurodata_type_def", "data_type_def")
TYPE_INC_KEYS = ("neurodata_type_inc", "data_type_inc")

Spec = dict[str, Any]


class SchemaError(ValueError):
    """An embedded specification document could not be used (the message says which and why)."""


def _version_key(version: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version))


def parse_document(text: str) -> Any:
    """A specification document as JSON (what pynwb/hdmf cache), else YAML when PyYAML exists."""
    try:
        return json.loads(text)
    except ValueError as e:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise SchemaError(f"not JSON ({e})") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as ye:
            raise SchemaError(f"neither JSON nor YAML ({ye})") from None


def _type_def(spec: Spec) -> str | None:
    for k in TYPE_DEF_KEYS:
        v = spec.get(k)
        if isinstance(v, str):
            return v
    return None


def _type_inc(spec: Spec) -> str | None:
    for k in TYPE_INC_KEYS:
        v = spec.get(k)
        if isinstance(v, str):
            return v
    return None


def _specs(value: Any) -> list[Spec]:
    return [s for s in value if isinstance(s, dict)] if isinstance(value, list) else []


@dataclass
class Schema:
    """Type definitions by namespace, and which namespaces each one includes."""

    types: dict[str, dict[str, Spec]] = field(default_factory=dict)  # ns -> name -> spec
    includes: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line per unusable document

    @classmethod
    def from_documents(cls, docs: Mapping[tuple[str, str, str], str]) -> Schema:
        """Build from ``{(namespace, version, source): text}``. Only the newest version of each
        namespace is used. A broken document is skipped and named in ``problems``."""
        schema = cls()
        newest: dict[str, str] = {}
        for ns, version, _ in docs:
            if ns not in newest or _version_key(version) > _version_key(newest[ns]):
                newest[ns] = version
        for (ns, version, source), text in sorted(docs.items()):
            if newest[ns] != version:
                continue
            where = f"specifications/{ns}/{version}/{source}"
            try:
                doc = parse_document(text)
                if not isinstance(doc, dict):
                    raise SchemaError("not a mapping")
            except SchemaError as e:
                schema.problems.append(f"{where}: {e}")
                continue
            if source == "namespace":
                for entry in _specs(doc.get("namespaces")):
                    name = entry.get("name", ns)
                    incs = [
                        s["namespace"]
                        for s in _specs(entry.get("schema"))
                        if isinstance(s.get("namespace"), str)
                    ]
                    schema.includes.setdefault(name, []).extend(incs)
                continue
            table = schema.types.setdefault(ns, {})
            for kind in ("groups", "datasets"):
                for spec in _specs(doc.get(kind)):
                    schema._collect(table, spec)
        return schema

    def _collect(self, table: dict[str, Spec], spec: Spec) -> None:
        """Register ``spec`` and every type defined inline inside it."""
        name = _type_def(spec)
        if name is not None:
            table.setdefault(name, spec)
        for kind in ("groups", "datasets"):
            for sub in _specs(spec.get(kind)):
                self._collect(table, sub)

    def find(self, name: str, namespace: str | None) -> tuple[Spec, str] | None:
        """The definition of type ``name``: in ``namespace``, its includes, then anywhere."""
        order: list[str] = []
        todo = [namespace] if namespace else []
        while todo:
            ns = todo.pop(0)
            if ns in order:
                continue
            order.append(ns)
            todo.extend(self.includes.get(ns, []))
        order.extend(ns for ns in sorted(self.types) if ns not in order)
        for ns in order:
            spec = self.types.get(ns, {}).get(name)
            if spec is not None:
                return spec, ns
        return None

    def chain(self, name: str | None, namespace: str | None) -> list[Spec]:
        """``name``'s definition followed by its ancestors' (most derived first)."""
        out: list[Spec] = []
        seen: set[str] = set()
        while name and name not in seen:
            seen.add(name)
            found = self.find(name, namespace)
            if found is None:
                break
            spec, namespace = found
            out.append(spec)
            name = _type_inc(spec)
        return out

    def subgroup_chain(self, parent_chain: Sequence[Spec], name: str) -> list[Spec]:
        """Spec of the untyped subgroup ``name`` of a group whose spec is ``parent_chain``."""
        for spec in parent_chain:
            for sub in _specs(spec.get("groups")):
                if sub.get("name") == name:
                    return [sub, *self.chain(_type_inc(sub), None)]
        return []

    def dims_options(
        self, group_chain: Sequence[Spec], name: str, own_type: str | None, own_ns: str | None
    ) -> list[list[list[str]]]:
        """Candidate dims of dataset ``name``, as lists of alternatives, best source first."""
        out: list[list[list[str]]] = []
        for spec in group_chain:
            for ds in _specs(spec.get("datasets")):
                if ds.get("name") == name:
                    alts = _alternatives(ds.get("dims"))
                    if alts:
                        out.append(alts)
                    out.extend(self._type_dims(_type_inc(ds), None))
        if own_type:
            out.extend(self._type_dims(own_type, own_ns))
        return out

    def _type_dims(self, name: str | None, namespace: str | None) -> list[list[list[str]]]:
        out = []
        for spec in self.chain(name, namespace):
            alts = _alternatives(spec.get("dims"))
            if alts:
                out.append(alts)
        return out


def _alternatives(dims: Any) -> list[list[str]]:
    """``dims`` of a spec as a list of alternatives: ``[a, b]`` -> ``[[a, b]]``."""
    if not isinstance(dims, list) or not dims:
        return []
    if all(isinstance(d, str) for d in dims):
        return [list(dims)]
    return [
        list(alt) for alt in dims if isinstance(alt, list) and all(isinstance(d, str) for d in alt)
    ]


def fallback_dims(array: str, rank: int) -> list[str]:
    return [f"{array}_dim_{i}" for i in range(rank)]


def choose_dims(options: Iterable[list[list[str]]], array: str, rank: int) -> list[str]:
    """The first alternative of the right rank, else ``<array>_dim_<i>``."""
    for alts in options:
        for alt in alts:
            if len(alt) == rank:
                return list(alt)
    return fallback_dims(array, rank)


@dataclass
class ArrayInfo:
    """What the naming needs to know of one array of a group."""

    name: str
    shape: tuple[int, ...]
    existing: list[str] | None = None  # its _ARRAY_DIMENSIONS, when it has one
    neurodata_type: str | None = None
    namespace: str | None = None


def assign_group(
    schema: Schema | None, group_chain: Sequence[Spec], arrays: Iterable[ArrayInfo]
) -> dict[str, list[str]]:
    """``_ARRAY_DIMENSIONS`` for every array of one group that has none (rules 2-4 above)."""
    arrays = sorted(arrays, key=lambda a: a.name)
    length_of: dict[str, int] = {}
    for a in arrays:
        if a.existing is not None and len(a.existing) == len(a.shape):
            for d, n in zip(a.existing, a.shape, strict=True):
                length_of.setdefault(d, n)
    out: dict[str, list[str]] = {}
    for a in arrays:
        if a.existing is not None:
            continue
        rank = len(a.shape)
        options = (
            schema.dims_options(group_chain, a.name, a.neurodata_type, a.namespace)
            if schema is not None
            else []
        )
        wanted = choose_dims(options, a.name, rank)
        names: list[str] = []
        for d, n in zip(wanted, a.shape, strict=True):
            name = d
            k = 0
            while (name in length_of and length_of[name] != n) or name in names:
                k += 1
                name = f"{d}_{k}"
            length_of.setdefault(name, n)
            names.append(name)
        out[a.name] = names
    return out
