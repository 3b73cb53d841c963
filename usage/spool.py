"""A durable local queue for usage events the broker could not take.

SQLite in WAL mode with `synchronous=FULL` fsyncs every commit, so an appended
batch survives a crash or a restart of the gateway. Rows are read back in the
order they were written (a monotonic sequence) and deleted only after the broker
acknowledged them, so replay loses nothing; a message acknowledged but not yet
deleted is sent twice, which the ledger's unique event id absorbs.

Several gateway processes on one host may share a spool file: appends are
serialised by SQLite, and a lock file makes one process at a time the replayer.

The file never grows past `max_bytes` (SQLite's `max_page_count`; pages freed by
replay are reused first): an append beyond it fails with SQLite's own "database or
disk is full", exactly as when the disk itself is full, so both take the same path in
the producer (the batch is kept in memory and the gateway stops admitting requests).
The chart sizes the pod's emptyDir above the cap (plus the write-ahead log, kept
small by `journal_size_limit`), so the kubelet never evicts the pod for its spool.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SPOOL_FILE = "usage-spool.sqlite3"
# The write-ahead log is truncated to this after each checkpoint (it grows by at most one batch meanwhile).
WAL_LIMIT_BYTES = 8 * 1024 * 1024


class Spool:
    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / SPOOL_FILE
        self._lock_path = directory / (SPOOL_FILE + ".lock")
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=full")
        self._db.execute(f"pragma journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.execute(
            "create table if not exists spool (seq integer primary key autoincrement, key blob, payload blob not null)"
        )
        self._page = int(self._db.execute("pragma page_size").fetchone()[0])
        if max_bytes is not None:
            # Per connection; at least the pages the file already has, or SQLite would refuse to open it.
            pages = max(max_bytes // self._page, int(self._db.execute("pragma page_count").fetchone()[0]))
            self._db.execute(f"pragma max_page_count={pages}")

    def used_bytes(self) -> int:
        """Bytes the rows take (the file's pages less those freed by replay, which appends reuse)."""
        pages = int(self._db.execute("pragma page_count").fetchone()[0])
        free = int(self._db.execute("pragma freelist_count").fetchone()[0])
        return (pages - free) * self._page

    def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Write a batch in one fsynced transaction: one disk flush per batch, not per event."""
        if not items:
            return
        with self._tx():
            self._db.executemany("insert into spool (key, payload) values (?, ?)", items)

    def peek(self, limit: int) -> list[tuple[int, bytes | None, bytes]]:
        rows = self._db.execute("select seq, key, payload from spool order by seq limit ?", (limit,))
        return [(int(seq), key, payload) for seq, key, payload in rows.fetchall()]

    def delete_through(self, seq: int) -> None:
        """Forget everything up to `seq`: called only after the broker acknowledged those rows."""
        with self._tx():
            self._db.execute("delete from spool where seq <= ?", (seq,))

    def count(self) -> int:
        return int(self._db.execute("select count(*) from spool").fetchone()[0])

    def is_empty(self) -> bool:
        return self._db.execute("select 1 from spool limit 1").fetchone() is None

    @contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """Yield True when this process may replay now; another process replaying yields False."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front, so two appending processes queue instead of failing.
        self._db.execute("begin immediate")
        try:
            yield
        except BaseException:
            self._db.execute("rollback")
            raise
        self._db.execute("commit")
