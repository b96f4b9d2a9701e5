"""The kernel's mount tables (``/proc/self/mountinfo``, ``/proc/mounts``), parsed.

One place for the two details every reader of these files must get right: fields escape space,
tab, newline and backslash as ``\\ooo``, and a mount point may hold a stack of mounts, of which
the last listed is the one a path lookup sees. Pure text handling; callers read the files.
"""

from __future__ import annotations

from collections import namedtuple

# (mountpoint, fstype, source), all str. A collections namedtuple rather than typing.NamedTuple:
# ``lindifuse umount`` reads the table too, and its start imports no ``typing``.
MountEntry = namedtuple("MountEntry", ["mountpoint", "fstype", "source"])


def unescape(field: str) -> str:
    """A mount-table field with its ``\\ooo`` octal escapes decoded."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) - i >= 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo_entries(text: str) -> list[MountEntry]:
    """The entries of a ``/proc/self/mountinfo`` text, in order; malformed lines are skipped.
    The source is ``""`` when the line has none."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if not sep or len(parts) < 5 or not rest:
            continue
        source = unescape(rest[1]) if len(rest) > 1 else ""
        found.append(MountEntry(unescape(parts[4]), rest[0], source))
    return found


def mounts_entries(text: str) -> list[MountEntry]:
    """The entries of a ``/proc/mounts`` (fstab-format) text, in order."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 2:
            found.append(MountEntry(unescape(parts[1]), parts[2], unescape(parts[0])))
    return found


def top_mount(entries: list[MountEntry], mountpoint: str) -> MountEntry | None:
    """The topmost entry mounted exactly at ``mountpoint``, or None."""
    found = None
    for e in entries:
        if e.mountpoint == mountpoint:
            found = e
    return found
