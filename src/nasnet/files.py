"""Writing files so that a crash never leaves a half-written one: write a temporary file in
the same folder, then rename it over the target (atomic on POSIX and Windows)."""

from __future__ import annotations

import errno
import json
import math
import os
from typing import Any


class FileFormatError(ValueError):
    """A file cannot be read as what it should be; the message names the file."""


def read_json(path: str, what: str = "JSON file") -> Any:
    """The JSON value in ``path``; :class:`FileFormatError` naming the file if it cannot be
    read, is not UTF-8 text, is not JSON, or nests too deeply to parse."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as err:
        raise FileFormatError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise FileFormatError(f"{path}: not a {what} (binary data, not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise FileFormatError(
            f"{path}: not a {what} (invalid JSON at line {err.lineno}: {err.msg})"
        ) from None
    except RecursionError:
        raise FileFormatError(f"{path}: not a {what} (JSON nested too deeply)") from None


class DirectoryError(ValueError):
    """A path that should be a writable directory is not; the message says why."""


def ensure_directory(path: str) -> None:
    """Create ``path`` if needed; :class:`DirectoryError` naming it if it is a file or cannot
    be written."""
    if not path:
        raise DirectoryError("the output directory's name is empty; give one")
    check_not_a_file(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise DirectoryError(f"{path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DirectoryError(f"{path}: not writable; choose another directory")


def check_not_a_file(path: str) -> None:
    """:class:`DirectoryError` when ``path``, to be used as a directory, is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DirectoryError(f"{path}: is a file, not a directory; choose another directory")


class WriteError(OSError):
    """A file could not be written; unlike a bare ``OSError`` from ``write()`` (a full disk),
    the message names the file, and the fix where one is known."""

    def __str__(self) -> str:
        fix = "; free some disk space and run again" if self.errno == errno.ENOSPC else ""
        return f"{self.filename}: cannot write ({self.strerror}){fix}"


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating its folder if needed; a failure is a
    :class:`WriteError` naming ``path`` (and ``path`` keeps what it held)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(err.errno, err.strerror or str(err), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str, data: Any) -> None:
    """``data`` as indented, strict JSON (NaN is refused) plus a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: str) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


__all__ = [
    "DirectoryError",
    "FileFormatError",
    "WriteError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_directory",
    "read_json",
]
