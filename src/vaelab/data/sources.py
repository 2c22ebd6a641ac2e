"""Where data files come from: the package itself, local folders, a user cache, official mirrors.

Files are verified by the MD5 of their *uncompressed* content (gzip wrappers differ between
mirrors and repackagings such as Debian's, the images inside do not). A successful verification is
remembered in the user cache, keyed by path, size and modification time, so it is paid once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from vaelab.data.idx import content_md5
from vaelab.errors import VaelabError
from vaelab.io import atomic_write, atomic_write_json

SPLIT_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def cache_dir() -> Path:
    """The user cache: ``$VAELAB_CACHE`` if set, else the platform's cache folder for vaelab."""
    return Path(os.environ.get("VAELAB_CACHE") or platformdirs.user_cache_dir("vaelab"))


@dataclass(frozen=True)
class RemoteFiles:
    """An IDX data set's four files: their MD5s (uncompressed) and the mirrors that serve them gzipped."""

    md5: dict[str, str]  # canonical file name (no .gz) -> md5 of the uncompressed content
    mirrors: tuple[str, ...]


def find_idx_file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder`` (also the ``images.idx3`` spelling some archives use)."""
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        path = Path(folder) / candidate
        if path.is_file():
            return path
    return None


def folder_has_idx_set(folder: Path) -> bool:
    return all(find_idx_file(folder, name) is not None for name in SPLIT_FILES)


def md5_of_content(path: Path) -> str:
    return content_md5(Path(path), str(path))


def _verified_record() -> Path:
    return cache_dir() / "verified.json"


def verify_md5(path: Path, expected: str) -> None:
    """Check the uncompressed content's MD5, once per (path, size, mtime); raise if it differs."""
    verify_digest(path, expected, "md5")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def verify_digest(path: Path, expected: str, algorithm: str) -> None:
    """Check ``path``'s digest once per (path, size, mtime), remembered in the cache; raise if it differs."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    record_path = _verified_record()
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if isinstance(record, dict) and record.get(key) == expected:
        return
    # md5: of the content inside a gzip wrapper (mirrors differ in the wrapper); sha256: of the file
    actual = md5_of_content(path) if algorithm == "md5" else sha256_of_file(path)
    if actual != expected:
        raise VaelabError(
            f"{path} failed its checksum ({algorithm} of content {actual}, expected {expected}): "
            "the file is corrupt or not the official one; delete it and fetch it again"
        )
    record = record if isinstance(record, dict) else {}
    record[key] = expected
    with contextlib.suppress(OSError):  # an unwritable cache only costs a re-check next time
        atomic_write_json(record_path, record)


def download(remote: RemoteFiles, dest: Path, timeout: float = 30.0) -> Path:
    """Fetch the four files into ``dest`` from the first mirror that answers; verify each MD5."""
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for name, expected in remote.md5.items():
        target = dest / (name + ".gz")
        if target.is_file():
            try:
                verify_md5(target, expected)
                continue
            except VaelabError:
                target.unlink()
        for mirror in remote.mirrors:
            url = mirror.rstrip("/") + "/" + name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                errors.append(f"{url}: {err}")
                continue
            try:
                actual = content_md5(payload, url)
            except VaelabError as err:
                errors.append(str(err))
                continue
            if actual != expected:
                errors.append(f"{url}: checksum mismatch")
                continue
            atomic_write(target, lambda tmp, data=payload: tmp.write_bytes(data))
            break
        else:
            raise ConnectionError("; ".join(errors[-len(remote.mirrors) :]))
    return dest
