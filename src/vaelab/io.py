"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file vaelab writes into a run directory goes through here (temporary file in the same
directory, fsync, then ``os.replace``), so a run killed at any instant leaves no torn checkpoint.
A write the disk or the file system refuses (full, read-only, no permission) leaves the old file
as it was, removes its temporary file and raises :class:`~vaelab.errors.VaelabError` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError

# the failures a user fixes on their side (disk, permissions, paths), as they read them
REASONS = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk full (quota exceeded)",
    errno.EFBIG: "file too large (disk full, or a file-size limit of this process)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EEXIST: "it exists and is not a directory",
}
_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports an I/O error


def require_regular_file(path: Path | str, what: str = "file") -> int:
    """The size of ``path`` if it is a regular file; a device, pipe or folder (which a read would hang on
    or never finish: /dev/zero, a FIFO) is refused in one line."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise VaelabError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise VaelabError(f"cannot read {what} {path}: {reason(err)}") from None
    if not stat.S_ISREG(status.st_mode):
        raise VaelabError(f"{what} {path} is not a regular file (a folder, device or pipe)")
    return status.st_size


def os_errno(err: BaseException) -> int | None:
    """The OS error number behind ``err``: an OSError's, or one that a library put in its message."""
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, Exception):
        match = _RUST_IO_ERROR.search(str(err))
        return int(match.group(1)) if match else None
    return None


def reason(err: BaseException) -> str:
    """Why an operating-system call failed, in words."""
    if (number := os_errno(err)) in REASONS:
        return REASONS[number]
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


def cannot_write(path: Path | str, err: BaseException, verb: str = "write") -> VaelabError:
    """The user's error for a failed write of ``path``."""
    return VaelabError(f"cannot {verb} {path}: {reason(err)}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise cannot_write(path, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if os_errno(err) in REASONS:
            raise cannot_write(path, err) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def markdown_figure(name: str, path: str) -> str:
    """A report's Markdown for one figure file: an image where viewers draw one (PNG, SVG), else a link (PDF)."""
    return f"![{name}]({path})" if not path.lower().endswith(".pdf") else f"[{name} (PDF)]({path})"
