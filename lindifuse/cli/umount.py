"""``lindifuse umount MOUNTPOINT``: unmount and wait until the daemon has exited (so every
pending write has been committed); see ``lindifuse.service.unmount``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "umount",
        help="unmount and wait for the daemon to exit",
        description="Unmount MOUNTPOINT and wait until its daemon has exited "
        "(so every pending write has been committed). A writable mount first commits "
        "durably; if that fails, the mount stays and the exit status is 1. A busy mount (a "
        "process has a file open or its working directory inside) is not unmounted: the "
        "processes are named and the exit status is 1; --lazy detaches it at once and the "
        "daemon exits when the last file is closed. Ordinary users unmount through fusermount3.",
        epilog="examples:\n"
        "  lindifuse umount /mnt/session\n"
        "  lindifuse umount --lazy /mnt/session      # busy: detach now, finish later\n"
        "  umount /mnt/session                       # root: the same through umount(8)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach even if busy)")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the daemon to exit (default 120)",
    )


def run(args: argparse.Namespace) -> int:
    from lindifuse.service.unmount import umount

    return umount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
