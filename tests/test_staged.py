"""Unit tests of the staging of a file being written (lindifuse.fs.writer.Staged)."""

from __future__ import annotations

from lindifuse.fs.writer import Budget, Staged


def test_first_write_is_kept_without_a_copy_and_copied_before_a_change(tmp_path):
    budget = Budget()
    st = Staged(str(tmp_path), budget)
    data = bytes(range(256)) * 4096
    assert st.pwrite(0, data) == len(data)
    assert st.read_all() is data  # the request's own bytes: no copy
    assert (st.size, budget.used, st.dirty) == (len(data), len(data), True)
    snapshot = st.read_all()
    st.pwrite(10, b"xyz")  # a change copies first: the snapshot a commit holds stays as it was
    assert snapshot == data
    assert st.read_all() == data[:10] + b"xyz" + data[13:]
    st.pwrite(len(data) + 2, b"ab")  # past the end: a hole of zeros
    assert st.read_all()[-4:] == b"\0\0ab"
    assert st.size == budget.used == len(data) + 4
    st.release()
    assert budget.used == 0


def test_truncate_and_spill_of_a_kept_buffer(tmp_path):
    budget = Budget()
    st = Staged(str(tmp_path), budget)
    data = b"a" * 5000
    st.pwrite(0, data)
    st.truncate(10)
    assert st.read_all() == b"a" * 10 and data == b"a" * 5000
    assert st.pread(5, 100) == b"a" * 5
    st2 = Staged(str(tmp_path), budget)
    st2.pwrite(0, data)
    st2.spill()
    assert not st2.in_memory and st2.read_all() == data
    st2.pwrite(4999, b"bc")
    assert st2.read_all() == b"a" * 4999 + b"bc"
    st.release()
    st2.release()
    assert budget.used == 0


def test_a_write_not_at_offset_zero_is_copied(tmp_path):
    st = Staged(str(tmp_path), Budget())
    st.pwrite(3, b"xyz")
    assert st.read_all() == b"\0\0\0xyz"
    st.pwrite(0, b"12")
    assert st.read_all() == b"12\0xyz"
