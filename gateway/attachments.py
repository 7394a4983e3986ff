"""Attachment files on disk, named by their SHA-256, written durably before the database points at them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.messages import InboundAttachment

#: Path separators, control characters (C0 and C1), line and paragraph separators, and the bidi controls
#: that make "evil\u202egnp.exe" show as "evilexe.png".
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LEADING = re.compile(r"^[\s.]+")


@dataclasses.dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An attachment as the database records it: a file by hash, or a note of why it was left out."""

    filename: str
    content_type: str
    size: int | None
    sha256: str | None
    omitted: str | None = None

    def row(self, message_id: int, now: dt.datetime) -> dict[str, object]:
        """The `attachments` row of this file on message `message_id`."""
        return {"message_id": message_id, "filename": self.filename, "content_type": self.content_type,
                "size": self.size, "sha256": self.sha256, "omitted": self.omitted, "created_at": now}


def safe_filename(name: str | None) -> str:
    """A display name with no path, no control characters, at most 255 characters (Persian kept)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _LEADING.sub("", _UNSAFE.sub("", base))  # no hidden name, even behind a space (". .env")
    return base[:255].rstrip() or "attachment"


class AttachmentStore:
    """Files under `root/ab/cd/<sha256>`; equal content is stored once.

    `keep` applies the size and count limits and returns what the database should record; a file is
    fsynced and renamed into place before `keep` returns, so a committed row always finds its file.
    """

    def __init__(self, root: Path, *, max_bytes: int, max_count: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_count = max_count

    def path_for(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def keep(self, files: Sequence[InboundAttachment]) -> list[StoredAttachment]:
        if not files:
            return []
        return await asyncio.to_thread(self._keep_sync, files)

    def _keep_sync(self, files: Sequence[InboundAttachment]) -> list[StoredAttachment]:
        kept = []
        for index, item in enumerate(files):
            name = safe_filename(item.filename)
            ctype = (item.content_type or "application/octet-stream")[:255]
            size = len(item.data) if item.data is not None else item.size
            if index >= self.max_count:
                reason = f"more than {self.max_count} attachments"
            elif item.data is None:
                reason = "not downloaded from the provider"
            elif len(item.data) > self.max_bytes:
                reason = f"larger than {self.max_bytes} bytes"
            else:
                kept.append(StoredAttachment(name, ctype, size, self.put(item.data)))
                continue
            kept.append(StoredAttachment(name, ctype, size, None, omitted=reason))
        return kept

    def put(self, data: bytes) -> str:
        """Store `data` durably and return its SHA-256. Raises OSError (disk full, ...) untouched."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return digest


    def sweep_partials(self, older_than: float = 3600.0) -> int:
        """Remove half-written files a killed process left; a live writer's file is seconds old."""
        removed = 0
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - older_than
        for part in self.root.glob("*/*/.part-*"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept it first
                continue
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
