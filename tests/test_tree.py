"""Unit tests of lindifuse.tree: every key a file, every proper prefix a directory, conflicts,
stable inodes, lookups (pure in-memory logic)."""

from __future__ import annotations

import random

from lindifuse.fs.tree import ROOT_INODE, Tree, join_key

KEYS = [
    ".zgroup",
    ".zattrs",
    "acquisition/.zgroup",
    "acquisition/ts/.zgroup",
    "acquisition/ts/data/.zarray",
    "acquisition/ts/data/0.0",
    "acquisition/ts/data/0.1",
    "general/x/y/z/deep",
]


def files_and_dirs(tree: Tree) -> tuple[set[str], set[str]]:
    files, dirs = set(), set()
    for node in tree.nodes.values():
        (dirs if node.is_dir else files).add(node.key)
    return files, dirs


def test_keys_become_files_and_prefixes_directories():
    t = Tree.from_keys(KEYS)
    files, dirs = files_and_dirs(t)
    assert files == set(KEYS)
    assert dirs == {
        "",
        "acquisition",
        "acquisition/ts",
        "acquisition/ts/data",
        "general",
        "general/x",
        "general/x/y",
        "general/x/y/z",
    }
    assert t.nfiles == len(KEYS)
    assert t.ndirs == len(dirs)
    assert t.conflicts == []
    assert t.root.inode == ROOT_INODE and t.root.key == "" and t.root.is_dir


def test_structure_links():
    t = Tree.from_keys(KEYS)
    data = t.by_key("acquisition/ts/data")
    assert data is not None and data.is_dir
    assert sorted(data.children) == [".zarray", "0.0", "0.1"]
    chunk = t.lookup(data, "0.1")
    assert chunk is not None and not chunk.is_dir
    assert chunk.parent is data and chunk.name == "0.1" and chunk.key == "acquisition/ts/data/0.1"
    assert t.get(chunk.inode) is chunk
    assert t.by_key("acquisition/ts/data/0.1") is chunk
    assert t.lookup(data, "9.9") is None
    assert t.lookup(chunk, "x") is None  # a file has no children
    assert t.by_key("nope/x") is None
    assert t.by_key("acquisition/nope") is None
    assert t.get(10**9) is None
    # every node's key is its parent's key joined with its name
    for node in t.nodes.values():
        if node.parent is not None:
            assert node.key == join_key(node.parent.key, node.name)
            assert node.parent.children[node.name] is node


def test_inodes_unique_and_stable_for_the_tree():
    t = Tree.from_keys(KEYS)
    inodes = [n.inode for n in t.nodes.values()]
    assert len(set(inodes)) == len(inodes)
    assert all(i >= ROOT_INODE for i in inodes)
    snapshot = {n.key: n.inode for n in t.nodes.values()}
    for key in KEYS:  # lookups do not renumber anything
        t.by_key(key)
    assert {n.key: n.inode for n in t.nodes.values()} == snapshot


def test_order_of_keys_does_not_change_the_shape():
    shuffled = KEYS[:]
    random.Random(3).shuffle(shuffled)
    assert files_and_dirs(Tree.from_keys(shuffled)) == files_and_dirs(Tree.from_keys(KEYS))


def test_file_key_that_is_also_a_prefix_directory_wins():
    # the file comes first, then a key below it
    t = Tree.from_keys(["a", "a/b", "c/d"])
    assert t.by_key("a").is_dir and t.by_key("a/b") is not None
    assert t.conflicts == ["a"]
    assert t.nfiles == 2
    # the directory comes first, then the file key
    t = Tree.from_keys(["a/b", "a", "c/d"])
    assert t.by_key("a").is_dir
    assert t.conflicts == ["a"]
    assert t.nfiles == 2
    # deeper: a file in the middle of a longer path
    t = Tree.from_keys(["x/y", "x/y/z/w"])
    assert t.by_key("x/y").is_dir and not t.by_key("x/y/z/w").is_dir
    assert t.conflicts == ["x/y"]
    files, _ = files_and_dirs(t)
    assert files == {"x/y/z/w"}


def test_duplicate_keys_give_one_file():
    t = Tree.from_keys(["a/b", "a/b"])
    assert t.nfiles == 1 and t.conflicts == []


def test_walk_files():
    t = Tree.from_keys(KEYS)
    assert sorted(n.key for n in t.walk_files()) == sorted(KEYS)
    sub = t.by_key("acquisition/ts")
    assert sorted(n.key for n in t.walk_files(sub)) == [
        "acquisition/ts/.zgroup",
        "acquisition/ts/data/.zarray",
        "acquisition/ts/data/0.0",
        "acquisition/ts/data/0.1",
    ]


def test_empty_tree():
    t = Tree.from_keys([])
    assert t.nfiles == 0 and t.ndirs == 1 and t.root.children == {}
    assert list(t.walk_files()) == []


def test_unknown_size_until_computed():
    t = Tree.from_keys(["a/0"])
    assert t.by_key("a/0").size == -1


def test_many_keys():
    keys = [f"g{i % 7}/arr{i % 13}/{i}" for i in range(20000)]
    t = Tree.from_keys(keys)
    assert t.nfiles == 20000
    assert t.ndirs == 1 + 7 + len({(i % 7, i % 13) for i in range(20000)})
    assert t.by_key(keys[12345]).key == keys[12345]


def test_mutations_for_writable_mounts_keep_keys_consistent():
    t = Tree.from_keys(["a/x/0", "a/x/1", "b/.zgroup"])
    a, b = t.by_key("a"), t.by_key("b")
    moved = t.move(t.by_key("a/x"), b, "y")
    assert sorted(moved) == [("a/x/0", "b/y/0"), ("a/x/1", "b/y/1")]
    assert t.by_key("b/y/0").key == "b/y/0" and t.by_key("a/x") is None
    assert a.children == {}
    f = t.add_file(a, "new")
    assert f.key == "a/new" and t.nfiles == 4
    t.remove(f)
    assert t.nfiles == 3 and t.get(f.inode) is None


def _runs(keys: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """``keys`` as runs of one directory, as a loader that walked them would give them."""
    runs: list[tuple[str, list[str], list[str]]] = []
    for key in keys:
        parent, _, name = key.rpartition("/")
        if not runs or runs[-1][0] != parent:
            runs.append((parent, [], []))
        runs[-1][1].append(name)
        runs[-1][2].append(key)
    return runs


def test_from_runs_builds_what_from_keys_builds():
    chunks = [f"acquisition/ts/data/{i}" for i in range(50)]
    cases = [
        KEYS,
        KEYS + chunks,
        ["a", "a/b", "c/d"],  # a file key that is also a directory, both orders
        ["a/b", "a", "c/d"],
        ["x/y", "x/y/z/w"],
        ["a/b", "a/b", "a/c"],  # a repeated name inside one run: the key-by-key path
        ["d/0", "d/1", "e/0", "d/2", "d/1"],  # a directory met again, with a name it has
    ]
    for keys in cases:
        want, got = Tree.from_keys(keys), Tree.from_runs(_runs(keys))
        assert files_and_dirs(got) == files_and_dirs(want), keys
        assert sorted(got.conflicts) == sorted(want.conflicts), keys
        assert (got.nfiles, got.ndirs) == (want.nfiles, want.ndirs), keys
        assert {n.key: i for i, n in got.nodes.items()} == {n.key: i for i, n in want.nodes.items()}
        for node in got.nodes.values():
            if node.parent is not None:
                assert node.parent.children[node.name] is node
                assert got.by_key(node.key) is node
    # one run of new names takes the bulk path: inodes follow the run's order
    t = Tree.from_runs([("", [".zgroup"], [".zgroup"]), ("data", ["0", "1"], ["data/0", "data/1"])])
    assert [t.by_key(k).inode for k in (".zgroup", "data", "data/0", "data/1")] == [2, 3, 4, 5]


def test_from_keys_lazy_leaves_large_directories_for_their_first_use():
    chunks = [f"acquisition/ts/data/{i}" for i in range(50)]
    t = Tree.from_keys_lazy(KEYS + chunks, min_files=10)
    data = t.by_key("acquisition/ts/data")
    assert data.is_dir and data.children == {}  # not made yet
    assert t.pending == {data.inode: ["acquisition/ts/data/.zarray", "acquisition/ts/data/0.0",
                                      "acquisition/ts/data/0.1", *chunks]}  # fmt: skip
    assert t.nfiles == len(KEYS) - 3 and t.npending == 53
    assert t.nlink(data) == 2 and t.ndirs == 8  # every directory exists at once
    assert t.lookup(t.by_key("acquisition/ts"), "data") is data
    # by_key fills the directory of the key it is asked for; fill makes its files once
    assert t.by_key("acquisition/ts/data/7").key == "acquisition/ts/data/7"
    assert not t.pending and t.npending == 0 and t.nfiles == len(KEYS) + 50
    assert len(data.children) == 53 and t.fill(data) == 0
    inodes = {n.key: n.inode for n in t.nodes.values()}
    assert len(set(inodes.values())) == len(inodes)


def test_from_keys_lazy_builds_what_from_keys_builds():
    chunks = [f"acquisition/ts/data/{i}" for i in range(50)]
    cases = [
        KEYS,
        KEYS + chunks,
        KEYS + chunks + ["acquisition/ts/data/sub/x"],  # a lazy directory with a subdirectory
        ["a", "a/b", "c/d"],  # a file key that is also a directory, both orders
        ["a/b", "a", "c/d"],
        ["x/y", "x/y/z/w"],
        ["d/0", "d/1", "e/0", "d/2", "d/0/x"],  # a name of a large directory is a subdir
    ]
    for keys in cases:  # distinct keys: a reference set's (the contract of from_keys_lazy)
        for min_files in (1, 2, 3, 1000):
            want = Tree.from_keys(keys)
            got = Tree.from_keys_lazy(keys, min_files=min_files)
            assert sorted(got.conflicts) == sorted(want.conflicts), (keys, min_files)
            assert got.nfiles + got.npending == want.nfiles, (keys, min_files)
            got.fill_all()
            assert files_and_dirs(got) == files_and_dirs(want), (keys, min_files)
            assert (got.nfiles, got.ndirs) == (want.nfiles, want.ndirs), (keys, min_files)
            assert sorted(got.conflicts) == sorted(want.conflicts), (keys, min_files)
            for node in got.nodes.values():
                if node.parent is not None:
                    assert node.parent.children[node.name] is node
                    assert got.by_key(node.key) is node
