"""lindifuse.mounttable: the escapes and the stacking rule of the kernel's mount tables."""

from lindifuse.mounttable import MountEntry, mountinfo_entries, mounts_entries, top_mount, unescape

MOUNTINFO = (
    "36 25 0:32 / /mnt/a\\040b rw,relatime shared:1 - fuse.lindifuse src\\040x rw\n"
    "37 36 0:33 / /mnt/a\\040b rw - fuse.other other rw\n"
    "38 25 8:1 / / rw - ext4 /dev/sda1 rw\n"
    "garbage line\n"
)


def test_unescape_decodes_octal_and_leaves_the_rest() -> None:
    assert unescape(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert unescape("/plain") == "/plain"
    assert unescape("/end\\04") == "/end\\04"


def test_mountinfo_entries_and_the_top_of_a_stack() -> None:
    entries = mountinfo_entries(MOUNTINFO)
    assert entries[0] == MountEntry("/mnt/a b", "fuse.lindifuse", "src x")
    assert len(entries) == 3  # the malformed line is skipped
    assert top_mount(entries, "/mnt/a b") == MountEntry("/mnt/a b", "fuse.other", "other")
    assert top_mount(entries, "/mnt") is None


def test_mounts_entries() -> None:
    text = "src\\040x /mnt/my\\040dir fuse.lindifuse rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    assert mounts_entries(text) == [
        MountEntry("/mnt/my dir", "fuse.lindifuse", "src x"),
        MountEntry("/", "ext4", "/dev/sda1"),
    ]
