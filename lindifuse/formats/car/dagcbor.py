"""DAG-CBOR decoding with links as :class:`~.cid.Cid` objects.

``cbor2`` (C accelerated) decodes the CBOR; DAG-CBOR's one tag, 42 (a CID link), becomes a
``Cid``, so a link is never confused with a byte string (``libipld.decode_dag_cbor`` returns
both as ``bytes``, which would make an inline chunk indistinguishable from a link). Any other
tag is refused, as DAG-CBOR requires.
"""

from __future__ import annotations

from typing import Any

from lindifuse.formats.car.cid import cid_from_link

LINK_TAG = 42


class DagCborError(ValueError):
    pass


def _tag_hook(*args: Any) -> Any:
    # cbor2 5 calls tag_hook(decoder, tag), cbor2 6 tag_hook(tag, immutable)
    tag = next(a for a in args if hasattr(a, "tag") and hasattr(a, "value"))
    if tag.tag != LINK_TAG:
        raise DagCborError(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR")
    if not isinstance(tag.value, bytes):
        raise DagCborError("a DAG-CBOR link must be a byte string")
    try:
        return cid_from_link(tag.value)
    except ValueError as e:
        raise DagCborError(f"bad link: {e}") from None


def decode(data: bytes) -> Any:
    """The value encoded in ``data`` (one whole DAG-CBOR item). DagCborError if malformed."""
    import io

    import cbor2

    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, tag_hook=_tag_hook).decode()
    except DagCborError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, EOFError) as e:
        raise DagCborError(str(e) or type(e).__name__) from None
    if fp.tell() != len(data):
        raise DagCborError(f"{len(data) - fp.tell()} trailing bytes after the DAG-CBOR item")
    return value
