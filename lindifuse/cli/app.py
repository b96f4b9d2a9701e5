"""Command line: ``lindifuse COMMAND ...``, and the mount(8) / mount.fuse3 helper forms.

This module assembles the parser from one module per command (``lindifuse.cli.<command>``, each
with ``add_parser(sub)`` and ``run(args) -> int``), rewrites the helper forms and ``-o`` lists into
``mount ...`` and dispatches. Command modules import their layers inside ``run``: building the
parser must stay cheap, since ``lindifuse mount`` builds all of it (any other command named on the
command line builds only its own: ``lindifuse umount``'s start is part of every unmount).

Every failure the user can cause prints one line, ``lindifuse: <file>: <problem>``, and exits
non-zero; tracebacks are for bugs only (and go to the log with --log-level DEBUG).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from lindifuse import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of every start)
if TYPE_CHECKING:
    from lindifuse.service.mountopts import OptionTable

DESCRIPTION = """\
Mount a LINDI file (.lindi.json, .lindi.tar or .lindi.d) or an HDF5/NWB file (a local path or
an http(s) URL) as a directory tree of Zarr keys, so that zarr, xarray, ls, cp, du and any program
see an ordinary Zarr v2 directory. Reads resolve each key's reference to inline bytes, a member of
the archive, a local file or an HTTP range request, through a chunk cache. An HDF5 file is
indexed on its first mount (the same view lindi gives) and the index kept in the cache.
A whole DANDI dandiset (dandi://DANDISET[@VERSION][/folder], or its web page's URL) mounts as
its folders, with every NWB asset a Zarr directory loaded on first use."""

EPILOG = """\
examples:
  lindifuse mount session.lindi.tar /mnt/session
  lindifuse mount https://example.org/data/file.lindi.json /mnt/remote --read-only
  lindifuse session.lindi.tar /mnt/session -o ro,allow_other   # the form fstab uses
  python -c 'import zarr; print(zarr.open_group("/mnt/session", mode="r", zarr_format=2).tree())'
  lindifuse umount /mnt/session
  lindifuse mount sub-01_ses-01.nwb /mnt/nwb          # HDF5/NWB directly, read-only
  lindifuse index sub-01_ses-01.nwb -o sub-01.lindi.json
  lindifuse info session.lindi.tar
  lindifuse mount dandi://000939 /mnt/000939          # a whole dandiset, NWB files as Zarr
  lindifuse info dandi://000939@0.240101.1234 --check-indexes
  lindifuse mount session.nwb.lindi.tar /mnt/nwb --xarray    # for xarray.open_datatree

exit status: 0 on success, 1 when the source, the mount point or the operation failed
(one line on stderr says which file and why), 2 on a usage error.

See docs/semantics.md for exactly which file operations work and how."""


COMMANDS = ("mount", "umount", "info", "create", "check", "compact", "index", "stats", "cache")
"""The subcommands, in the order ``--help`` lists them; ``lindifuse.cli.<name>`` implements each."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only``, one holding just that command's subparser: what a
    command line naming its command needs (``lindifuse umount`` then imports no other command's
    module: its start is part of every unmount's wall time)."""
    parser = argparse.ArgumentParser(
        prog="lindifuse",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lindifuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        import_module(f"lindifuse.cli.{name}").add_parser(sub)
    return parser


def command_names(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The subcommands the parser knows (taken from it, so a new command is never mistaken for
    the SOURCE of the command-less mount form)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return tuple(action.choices)
    return ()


def mount_option_table(parser: argparse.ArgumentParser) -> OptionTable:
    """The ``-o`` names of ``lindifuse mount``: one per long option (hidden ones excluded)."""
    from lindifuse.service.mountopts import OptionTable

    mount = next(
        a.choices["mount"] for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    long_options: dict[str, bool] = {}
    hidden: set[str] = set()
    for action in mount._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                long_options[opt] = action.nargs != 0
                if action.help == argparse.SUPPRESS:
                    hidden.add(opt)
    return OptionTable.from_long_options(long_options, frozenset(hidden))


def normalize_argv(
    argv: list[str], prog: str, commands: tuple[str, ...] | None = None
) -> tuple[list[str], bool]:
    """Turn the mount(8)/mount.fuse3 forms into ``mount ...``; returns (argv, fake).

    ``mount.lindifuse SOURCE DIR [-sfnv] [-o OPTS]`` (prog named ``mount.*``, as mount(8) runs
    helpers: ``-f`` means fake there) and ``lindifuse SOURCE DIR [-o OPTS] [-f]`` (no command,
    as mount.fuse3 runs it; ``-f`` is foreground, like sshfs) both become ``mount SOURCE DIR``.
    Raises mountopts.MountOptionError on a bad helper call.
    """
    from lindifuse.service.mountopts import parse_helper_argv

    if prog.startswith("mount."):
        call = parse_helper_argv(argv)
        return ["mount", *call.argv], call.fake
    if commands is None:
        commands = command_names(build_parser())
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help", "--version"):
        return ["mount", *argv], False
    return argv, False


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if argv is None else "lindifuse"
    argv = sys.argv[1:] if argv is None else argv
    fake = False
    if not prog.startswith("mount.") and argv and argv[0] in COMMANDS and argv[0] != "mount":
        # A command other than mount, named (normalize_argv would leave it as it is): build
        # its parser only, and leave the -o machinery (lindifuse.service.mountopts) unimported.
        parser = build_parser(only=argv[0])
    else:
        parser = build_parser()
        from lindifuse.service.mountopts import MountOptionError, expand_argv

        try:
            argv, fake = normalize_argv(argv, prog, command_names(parser))
            if argv[:1] == ["mount"]:
                argv = ["mount", *expand_argv(argv[1:], mount_option_table(parser))]
        except MountOptionError as e:
            print(f"lindifuse: {e}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if fake:  # mount -f: check the arguments, mount nothing
        return 0
    from lindifuse.errors import LindiError

    try:
        return import_module(f"lindifuse.cli.{args.command}").run(args)
    except LindiError as e:
        print(f"lindifuse: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
