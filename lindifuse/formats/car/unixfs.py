"""dag-pb nodes and UnixFS data, decoded with the ``protobuf`` library.

The message types are those of the dag-pb spec (``PBNode``: ``Links`` = 2, ``Data`` = 1;
``PBLink``: ``Hash`` = 1, ``Name`` = 2, ``Tsize`` = 3) and of UnixFS's ``unixfs.proto``
(``Data``: ``Type``, ``Data``, ``filesize``, ``blocksizes``, ``hashType``, ``fanout``),
declared here as descriptors so no generated code or ``protoc`` is needed; decoding is
protobuf's (upb, in C). No Python package decodes UnixFS, and ``ipld-dag-pb`` (0.0.1) needs
the slow pure-Python ``multiformats``, hence protobuf for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lindifuse.formats.car.cid import Cid, cid_from_bytes

# UnixFS Data.Type
RAW, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = range(6)
TYPE_NAMES = ["raw", "directory", "file", "metadata", "symlink", "HAMTShard"]

_classes: tuple[Any, Any] | None = None


def _messages() -> tuple[Any, Any]:
    """(PBNode class, UnixFS Data class), built once."""
    global _classes
    if _classes is not None:
        return _classes
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="lindifuse_car_dagpb_unixfs.proto", package="lindifuse_car", syntax="proto2"
    )

    def field(msg: Any, name: str, number: int, ftype: int, label: int = f.LABEL_OPTIONAL,
              type_name: str | None = None) -> None:  # fmt: skip
        fd = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            fd.type_name = type_name

    link = fdp.message_type.add(name="PBLink")
    field(link, "Hash", 1, f.TYPE_BYTES)
    field(link, "Name", 2, f.TYPE_STRING)
    field(link, "Tsize", 3, f.TYPE_UINT64)
    node = fdp.message_type.add(name="PBNode")
    field(node, "Links", 2, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".lindifuse_car.PBLink")
    field(node, "Data", 1, f.TYPE_BYTES)
    data = fdp.message_type.add(name="Data")
    field(data, "Type", 1, f.TYPE_INT32, f.LABEL_OPTIONAL)
    field(data, "Data", 2, f.TYPE_BYTES)
    field(data, "filesize", 3, f.TYPE_UINT64)
    field(data, "blocksizes", 4, f.TYPE_UINT64, f.LABEL_REPEATED)
    field(data, "hashType", 5, f.TYPE_UINT64)
    field(data, "fanout", 6, f.TYPE_UINT64)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    _classes = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("lindifuse_car.PBNode")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("lindifuse_car.Data")),
    )
    return _classes


class DagPbError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Link:
    cid: Cid
    name: str | None
    tsize: int | None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: int
    data: bytes
    filesize: int | None
    blocksizes: tuple[int, ...]
    fanout: int | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type] if 0 <= self.type < len(TYPE_NAMES) else str(self.type)


@dataclass(frozen=True, slots=True)
class DagPbNode:
    links: tuple[Link, ...]
    data: bytes | None


def decode_node(block: bytes | memoryview) -> DagPbNode:
    """A dag-pb block. DagPbError when it is not valid protobuf or a link is not a CID."""
    from google.protobuf.message import DecodeError

    pbnode, _ = _messages()
    msg = pbnode()
    try:
        msg.ParseFromString(bytes(block))
    except (DecodeError, RuntimeError) as e:
        raise DagPbError(f"not a dag-pb node ({e})") from None
    links = []
    for lk in msg.Links:
        if not lk.HasField("Hash"):
            raise DagPbError("dag-pb link without a Hash")
        try:
            cid = cid_from_bytes(lk.Hash)
        except ValueError as e:
            raise DagPbError(f"dag-pb link: bad CID ({e})") from None
        links.append(
            Link(
                cid,
                lk.Name if lk.HasField("Name") else None,
                lk.Tsize if lk.HasField("Tsize") else None,
            )
        )
    return DagPbNode(tuple(links), msg.Data if msg.HasField("Data") else None)


def decode_unixfs(data: bytes | None) -> UnixFSData:
    """The UnixFS ``Data`` message of a dag-pb node's data field. DagPbError if absent/bad."""
    from google.protobuf.message import DecodeError

    if data is None:
        raise DagPbError("dag-pb node without UnixFS data")
    _, cls = _messages()
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError) as e:
        raise DagPbError(f"bad UnixFS data ({e})") from None
    if not msg.HasField("Type"):
        raise DagPbError("UnixFS data without a Type")
    return UnixFSData(
        msg.Type,
        msg.Data,
        msg.filesize if msg.HasField("filesize") else None,
        tuple(msg.blocksizes),
        msg.fanout if msg.HasField("fanout") else None,
    )
