"""One driver per experiment: an exclusive lock on ``DIR/experiment.lock`` (and one
``nasnet train`` per run folder, ``DIR/train.lock``, and one ``nasnet transfer`` per output
folder, ``OUT/transfer.lock``).

The lock is an operating-system file lock (``flock`` on POSIX, ``msvcrt.locking`` on
Windows), so it is released by the kernel whenever its holder ends, SIGKILL and power loss
included: a killed driver never leaves an experiment stuck. The file also records who holds the
lock (pid, host, since when), so that a second driver can say which one is running.
Readers (``nasnet show``, ``export``, ``report``) never take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import datetime

from nasnet.files import DirectoryError, ensure_directory

LOCK_NAME = "experiment.lock"
SEARCH_BUSY = "another search is running on this experiment"
#: ``nasnet train``'s lock on its run folder, and what a second one is told.
TRAIN_LOCK_NAME = "train.lock"
TRAIN_BUSY = "another 'nasnet train' is running in this folder"
#: ``nasnet transfer``'s lock on its output folder.
TRANSFER_LOCK_NAME = "transfer.lock"
TRANSFER_BUSY = "another 'nasnet transfer' is running in this folder"


class ExperimentLocked(RuntimeError):
    """Another driver holds the experiment; the message names it and what to do."""


class ExperimentLock:
    """``with ExperimentLock(directory):`` holds the experiment for this process."""

    def __init__(self, directory: str, name: str = LOCK_NAME, busy: str = SEARCH_BUSY) -> None:
        self.directory = directory
        self.path = os.path.join(directory, name)
        self.busy = busy  # what a second process is told is going on
        self.handle = None

    def acquire(self) -> None:
        """Take the lock; :class:`ExperimentLocked` if another driver holds it,
        :class:`~nasnet.files.DirectoryError` if the directory cannot be used."""
        ensure_directory(self.directory)
        try:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held while locked
        except OSError as err:
            raise DirectoryError(f"{self.path}: cannot open ({err.strerror})") from None
        try:
            _lock(handle)
        except OSError:
            holder = _read_holder(handle)
            handle.close()
            raise ExperimentLocked(
                f"{self.directory}: {self.busy} ({holder}); "
                "wait for it to finish or stop it, then run this command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            _unlock(self.handle)
            self.handle.close()
            self.handle = None

    def remove(self) -> None:
        """Delete the (released) lock file."""
        with contextlib.suppress(OSError):
            os.remove(self.path)

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_held(directory: str, name: str = LOCK_NAME) -> bool:
    """Whether a process holds the lock of ``directory`` now (tried without taking it for
    longer than the test; a folder that cannot be read counts as held)."""
    path = os.path.join(directory, name)
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    except OSError:
        return True
    with handle:
        try:
            _lock(handle)
        except OSError:
            return True
        _unlock(handle)
        return False


def _read_holder(handle) -> str:
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
        since = datetime.fromtimestamp(float(info["since"])).strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"


try:
    import fcntl

    def _lock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _lock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


__all__ = [
    "LOCK_NAME",
    "TRAIN_LOCK_NAME",
    "TRANSFER_LOCK_NAME",
    "ExperimentLock",
    "ExperimentLocked",
    "is_held",
]
