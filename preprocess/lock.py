"""One writer per folder (a store, or a training run's folder): an exclusive `flock` on FOLDER/.lock, held for the
whole run, holding the holder's pid.

The kernel drops the lock when the holder dies (kill -9, a crash), so a stale `.lock` file never blocks: the next
run locks it and writes its own pid. Worker processes close their inherited copy of the descriptor, so only the
run's own process holds it. The lock file may be removed by its holder (a run that wrote nothing); a run that
locked a file which was removed meanwhile notices (the path is another inode) and locks the new one instead.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: dict[int, int] = {}  # descriptor -> pid of the process that locked it (a forked child inherits them)


def close_inherited() -> None:
    """In a forked worker: close the lock descriptors inherited from the parent (the parent keeps its locks).

    A no-op in the process that took them, so in-process work may call it too."""
    for fd, pid in list(_HELD.items()):
        if pid != os.getpid():
            try:
                os.close(fd)
            except OSError:
                pass
            del _HELD[fd]


class StoreLocked(ValueError):
    """Another process holds the store's lock."""


class WriterLock:
    """`with WriterLock(store_dir):` -- an exclusive, non-blocking lock on the store folder (created if needed)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "WriterLock":
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise StoreLocked(f"{self.root} is being written by another run (pid {holder}): wait for it to "
                                  f"finish, or stop it (kill {holder}), then rerun") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed after we opened it: lock the one that is there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD[fd] = os.getpid()
        return self

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; `remove=True` also deletes the lock file (while still holding it)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        _HELD.pop(self.fd, None)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
