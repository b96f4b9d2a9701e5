"""``-o`` mount options: the spelling mount(8), fstab and ``mount.fuse3`` use.

``lindifuse SOURCE MOUNTPOINT -o ro,cache_dir=/var/cache/x,allow_other`` must mean exactly what
``lindifuse mount SOURCE MOUNTPOINT --read-only --cache-dir /var/cache/x -o allow_other`` means.
This module rewrites the ``-o`` lists of a ``mount`` command line into that canonical form, so
one argparse parser validates everything and the background daemon is started with the same,
already expanded, arguments.

Each ``-o`` item is one of:

* a lindifuse option: every long option of ``lindifuse mount`` (``--cache-dir DIR`` is
  ``cache_dir=DIR``, ``--no-readahead`` is ``no_readahead``), plus ``ro`` (``--read-only``) and
  ``rw`` (the default, accepted for symmetry). The table comes from the parser, so a new mount
  option gets its ``-o`` spelling without an edit here;
* a FUSE/kernel option passed on to libfuse (``allow_other``, ``allow_root``,
  ``default_permissions``, ``auto_unmount``, and the VFS flags libfuse 3 understands such as
  ``nosuid``, ``nodev``, ``noexec``, ``noatime``);
* a generic option that mount(8), systemd or desktop tools add to fstab lines and that means
  nothing to a FUSE daemon (``defaults``, ``auto``, ``noauto``, ``user``, ``users``, ``nofail``,
  ``_netdev``, ``x-systemd.*``, ``x-gvfs-*``, ...): accepted and ignored, as sshfs does.

Anything else is a :class:`MountOptionError` with a one-line message. Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Passed to libfuse unchanged. The VFS flags are the ones libfuse 3's mount code turns into
# mount(2) flags (fusermount3 applies them for ordinary users, forcing nosuid and nodev).
FUSE_OPTIONS = frozenset(
    {
        "allow_other",
        "allow_root",
        "default_permissions",
        "auto_unmount",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "async",
        "sync",
        "dirsync",
        "noatime",
        "nodiratime",
        "norelatime",
        "nostrictatime",
    }
)

# Accepted and ignored: they are for mount(8), systemd, udisks/gvfs or fstab tools, or they are
# atime variants the kernel chooses for FUSE anyway.
IGNORED_OPTIONS = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "nofail",
        "_netdev",
        "netdev",
        "atime",
        "relatime",
        "strictatime",
        "lazytime",
        "nolazytime",
        "diratime",
        "iversion",
        "noiversion",
        "loud",
        "silent",
        "comment",
        "delay_connect",
    }
)
IGNORED_PREFIXES = ("x-", "comment=")

# -o spellings that are not derived from a long option name.
ALIASES: Mapping[str, str | None] = {
    "ro": "--read-only",
    "rw": None,  # the default; a remote source is read-only whatever is asked
}


class MountOptionError(ValueError):
    """A ``-o`` item lindifuse does not know, or one used with/without a value wrongly."""


@dataclass(frozen=True)
class OptionTable:
    """What ``-o`` may name: ``{name: (long option, takes a value)}``."""

    options: Mapping[str, tuple[str, bool]]

    @classmethod
    def from_long_options(
        cls, long_options: Mapping[str, bool], hidden: frozenset[str] = frozenset()
    ) -> OptionTable:
        """Build the table from ``{"--cache-dir": True, "--no-cache": False, ...}``:
        ``--cache-dir`` is spelled ``cache_dir``. ``hidden`` options get no spelling."""
        table: dict[str, tuple[str, bool]] = {}
        for opt, takes_value in long_options.items():
            if opt in hidden or not opt.startswith("--"):
                continue
            table[opt[2:].replace("-", "_")] = (opt, takes_value)
        return cls(table)


@dataclass
class Expanded:
    """The canonical command line: ``args`` (long options, then ``-o FUSE,...`` if any)."""

    args: list[str] = field(default_factory=list)
    fuse: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def split_options(text: str) -> list[str]:
    """Split one ``-o`` value at commas; ``\\,`` is a literal comma (as in fstab and sshfs)."""
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if c == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return [x.strip() for x in items if x.strip()]


def translate(items: list[str], table: OptionTable) -> Expanded:
    """Translate ``-o`` items (already split) into long options, FUSE options and ignored ones.

    Raises MountOptionError for an unknown name, a flag given a value (``no_cache=1``) or an
    option that needs a value given none (``cache_dir``).
    """
    out = Expanded()
    for item in items:
        name, eq, value = item.partition("=")
        if name in ALIASES and not eq:
            alias = ALIASES[name]
            if alias is not None:
                out.args.append(alias)
            continue
        if name in table.options:
            opt, takes_value = table.options[name]
            if takes_value and not eq:
                raise MountOptionError(f"mount option {name!r} needs a value: {name}=...")
            if takes_value and not value:
                raise MountOptionError(f"mount option {name!r} has an empty value")
            if not takes_value and eq:
                raise MountOptionError(f"mount option {name!r} takes no value (got {item!r})")
            out.args += [opt, value] if takes_value else [opt]
            continue
        if name in FUSE_OPTIONS and not eq:
            out.fuse.append(name)
            continue
        if name in IGNORED_OPTIONS or item.startswith(IGNORED_PREFIXES):
            out.ignored.append(item)
            continue
        known = ", ".join(sorted({*table.options, *ALIASES, *FUSE_OPTIONS}))
        raise MountOptionError(f"unknown mount option {item!r} (known: {known})")
    return out


def expand_argv(argv: list[str], table: OptionTable) -> list[str]:
    """Rewrite every ``-o X``, ``-oX`` and ``--options X`` of a ``mount`` command line.

    Other tokens keep their order; the translated long options follow them, then one ``-o``
    with the FUSE options (if any), so the result parses with the ``mount`` parser and can be
    handed to the background daemon unchanged. ``--`` stops the rewriting.
    """
    rest: list[str] = []
    items: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest += argv[i:]
            break
        if tok in ("-o", "--options"):
            if i + 1 >= len(argv):
                raise MountOptionError(f"{tok} needs a value: -o OPTION[,OPTION...]")
            items += split_options(argv[i + 1])
            i += 2
            continue
        if tok.startswith("-o") and not tok.startswith("--"):
            items += split_options(tok[2:])
        elif tok.startswith("--options="):
            items += split_options(tok[len("--options=") :])
        else:
            rest.append(tok)
        i += 1
    ex = translate(items, table)
    fuse = ["-o", ",".join(ex.fuse)] if ex.fuse else []
    if rest and rest[-1:] == ["--"]:
        return [*rest[:-1], *ex.args, *fuse, "--"]
    if "--" in rest:
        k = rest.index("--")
        return [*rest[:k], *ex.args, *fuse, *rest[k:]]
    return [*rest, *ex.args, *fuse]


@dataclass
class HelperCall:
    """A ``mount.lindifuse`` / ``mount.fuse.lindifuse`` call as mount(8) makes it."""

    argv: list[str]  # the arguments for ``lindifuse mount``
    fake: bool = False  # ``-f``: do everything but the mount (mount -f)
    verbose: bool = False


def parse_helper_argv(argv: list[str]) -> HelperCall:
    """Parse ``SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`` (mount(8)'s helper convention:
    ``-f`` is *fake* here, not foreground; ``-n``, ``-s``, ``-t`` are accepted and unused)."""
    positional: list[str] = []
    out: list[str] = []
    call = HelperCall(argv=out)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-o", "-t", "-N"):
            if i + 1 >= len(argv):
                raise MountOptionError(f"{tok} needs a value")
            if tok == "-o":
                out += ["-o", argv[i + 1]]
            i += 2
            continue
        if tok.startswith("-o") and len(tok) > 2:
            out += ["-o", tok[2:]]
        elif tok.startswith("-") and len(tok) > 1 and not tok.startswith("--"):
            for flag in tok[1:]:
                if flag == "f":
                    call.fake = True
                elif flag == "v":
                    call.verbose = True
                elif flag not in "sn":
                    raise MountOptionError(f"unknown mount helper flag -{flag}")
        else:
            positional.append(tok)
        i += 1
    if len(positional) != 2:
        raise MountOptionError(
            "usage: mount.lindifuse SOURCE MOUNTPOINT [-o OPTIONS] (as run by mount(8))"
        )
    call.argv = [*positional, *out]
    return call
