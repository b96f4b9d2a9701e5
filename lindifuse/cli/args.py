"""Argument types and option groups shared by several commands (argparse ``type=`` callables
raise ``ArgumentTypeError`` with the value quoted, so usage errors stay one line)."""

from __future__ import annotations

import argparse
from typing import Any


def owner_id(kind: str) -> Any:
    """argparse type: a number, or a user/group name looked up in the system's database."""

    def convert(text: str) -> int:
        if text.isdigit():
            return int(text)
        import grp
        import pwd

        try:
            return pwd.getpwnam(text).pw_uid if kind == "user" else grp.getgrnam(text).gr_gid
        except KeyError:
            raise argparse.ArgumentTypeError(f"no such {kind}: {text!r}") from None

    convert.__name__ = kind
    return convert


def octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mask: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mask out of range: {text!r}")
    return value


def dandi_options(p: Any) -> None:
    p.add_argument(
        "--dandi-api",
        metavar="URL",
        help="dandisets: root of the DANDI API (default $LINDIFUSE_DANDI_API, else "
        "https://api.dandiarchive.org/api); its host also gets DANDI_API_KEY and has its asset "
        "download redirects resolved once",
    )


def size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    for h in hosts:
        if "/" in h or " " in h:
            raise argparse.ArgumentTypeError(f"not a host or host:port: {h!r}")
    return hosts
