"""The spool keeps events across restarts, in order, and lets one process at a time replay."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from usage.spool import Spool


def test_rows_survive_reopening_in_order(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append([(b"a", b"1"), (None, b"2")])
    s.append([(b"a", b"3")])
    s.close()
    again = Spool(tmp_path)
    assert [(k, p) for _, k, p in again.peek(10)] == [(b"a", b"1"), (None, b"2"), (b"a", b"3")]
    assert again.count() == 3
    again.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.binary(min_size=1, max_size=8), max_size=5), max_size=8), st.data())
def test_delete_through_forgets_exactly_a_prefix(tmp_path_factory, batches: list[list[bytes]], data) -> None:
    s = Spool(tmp_path_factory.mktemp("spool"))
    flat = [p for b in batches for p in b]
    for b in batches:
        s.append([(None, p) for p in b])
    rows = s.peek(len(flat) + 1)
    assert [p for _, _, p in rows] == flat
    if rows:
        cut = data.draw(st.integers(0, len(rows) - 1))
        s.delete_through(rows[cut][0])
        assert [p for _, _, p in s.peek(len(flat))] == flat[cut + 1 :]
        assert s.is_empty() == (cut == len(rows) - 1)
    else:
        assert s.is_empty()
    s.close()


def _append_many(directory: str, tag: str, n: int) -> None:
    s = Spool(Path(directory))
    for i in range(0, n, 10):
        s.append([(tag.encode(), f"{tag}-{j}".encode()) for j in range(i, min(i + 10, n))])
    s.close()


def test_processes_sharing_a_spool_lose_nothing_and_keep_their_own_order(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), tag, 300)) for tag in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = Spool(tmp_path)
    rows = s.peek(10_000)
    assert len(rows) == 900
    for tag in ("a", "b", "c"):
        mine = [p.decode() for _, k, p in rows if k == tag.encode()]
        assert mine == [f"{tag}-{j}" for j in range(300)]
    s.close()


def _hold_lock(directory: str, ready, release, result) -> None:
    s = Spool(Path(directory))
    with s.replay_lock() as mine:
        result.put(mine)
        ready.set()
        release.wait(30)
    s.close()


def test_only_one_process_replays_at_a_time(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release, result))
    holder.start()
    try:
        assert ready.wait(30)
        assert result.get(timeout=5) is True
        s = Spool(tmp_path)
        with s.replay_lock() as mine:
            assert mine is False
        release.set()
        holder.join(30)
        with s.replay_lock() as mine:
            assert mine is True
        s.close()
    finally:
        release.set()
        holder.join(30)
