"""A content-addressed, crash-safe store of cell results.

Each result is one JSON record ``<root>/<kind>/<key>.json`` holding the cell's spec, its
result, run metadata and a SHA-256 checksum of the rest. Records are written to a
temporary file in the same folder and renamed into place (``os.replace`` is atomic), so a
killed run leaves either the whole record or none. A record that fails to parse or whose
checksum does not match is reported, removed and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that keys and checksums hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(value: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _umask() -> int:
    """The process's file-creation mask (read once: setting it is the only way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's own files are 0600


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename; the file
    gets the mode a plain ``open()`` would give it (0644 under the usual umask 022)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Cache:
    """Results by key under ``root`` (created if needed; ValueError if not writable)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe.", delete=True)
            probe.close()
        except OSError as exc:
            raise ValueError(f"cache directory {str(root)!r} cannot be written: {exc.strerror}"
                             ) from exc

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def artifact_path(self, key: str, suffix: str) -> Path:
        """Where a cell stores a side file (a network checkpoint, ...); the folder exists."""
        folder = self.root / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}{suffix}"

    def load(self, kind: str, key: str) -> dict | None:
        """The stored record, or None if absent; a damaged record is warned about and removed."""
        path = self.path(kind, key)
        try:
            with open(path, "rb") as handle:
                seen = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"cache entry {path} is unreadable ({exc}): it will be recomputed",
                          stacklevel=2)
            return None
        try:
            record = json.loads(data)
        except ValueError as exc:
            return self._discard(path, seen, f"unreadable ({exc})")
        if not isinstance(record, dict):
            return self._discard(path, seen, f"a JSON {type(record).__name__}, not a record")
        body = {k: v for k, v in record.items() if k != "checksum"}
        if record.get("checksum") != digest(body) or record.get("key", key) != key:
            return self._discard(path, seen, "checksum mismatch (truncated or altered)")
        return record

    def store(self, kind: str, key: str, record: dict) -> dict:
        """Write ``record`` (with its checksum) atomically; return what was written."""
        body = dict(record)
        body.pop("checksum", None)
        text = canonical_json({**body, "checksum": digest(body)})
        atomic_write_bytes(self.path(kind, key), text.encode())
        return json.loads(text)  # exactly what a later load returns (key order, lists)

    def _discard(self, path: Path, seen: os.stat_result, why: str) -> None:
        warnings.warn(f"cache entry {path} is {why}: discarded, it will be recomputed",
                      stacklevel=3)
        try:  # remove it unless another process has just renamed a new record into place
            now = path.stat()
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                path.unlink()
        except FileNotFoundError:
            pass
        return None
