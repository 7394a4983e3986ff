"""Attachment files on disk, named by their SHA-256, written durably before the database points at them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import StorageFull
from gateway.messages import InboundAttachment

log = logging.getLogger("kartabl.attachments")

#: Errors of a disk (or a quota) with no room left.
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: How often a full store looks for room again (seconds), and how much more than the write that
#: failed it wants free before it says so.
ROOM_CHECK_S = 2.0
ROOM_MARGIN = 1 << 20
#: Health calls the store low on space below this many of its largest files.
LOW_SPACE_FILES = 20

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
        self.full_since: float | None = None  # time.time() of the write that found the disk full
        self._needed = 0  # bytes of the write that failed

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def describe(self) -> dict[str, Any]:
        """For /healthz: whether files can be written, and the room left on their disk."""
        try:
            free: int | None = shutil.disk_usage(self._existing()).free
        except OSError:
            free = None
        report: dict[str, Any] = {"ok": not self.full, "free_bytes": free,
                                  "low_space": free is not None and free < LOW_SPACE_FILES * self.max_bytes}
        if self.full_since is not None:
            report["full_since"] = dt.datetime.fromtimestamp(self.full_since, dt.UTC).isoformat()
        return report

    def _existing(self) -> Path:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def _filled(self, needed: int, exc: OSError) -> StorageFull:
        self._needed = max(self._needed, needed)
        if self.full_since is None:
            self.full_since = time.time()
            log.error("attachment directory %s is full (%s): messages with files stay with their providers "
                      "until there is room; free space there and the gateway goes on by itself", self.root,
                      exc.strerror or exc)
        return StorageFull(f"the attachment directory {self.root} is full", wait=self.wait_room)

    def _roomy(self) -> None:
        if self.full_since is not None:
            log.warning("attachment directory %s has room again after %.1f s", self.root,
                        time.time() - self.full_since)
            self.full_since, self._needed = None, 0

    async def wait_room(self) -> None:
        """Return once the disk has room for the write that failed (checked every ROOM_CHECK_S)."""
        while self.full:
            try:
                free = (await asyncio.to_thread(shutil.disk_usage, self._existing())).free
            except OSError:
                free = 0
            if free >= self._needed + ROOM_MARGIN:
                self._roomy()
                return
            await asyncio.sleep(ROOM_CHECK_S)

    def path_for(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def keep(self, files: Sequence[InboundAttachment]) -> list[StoredAttachment]:
        """Write what the limits allow and return every attachment as the database records it.

        A full disk raises StorageFull (logged once): nothing is half-recorded, and the caller's
        message stays with its provider until `wait_room()` returns.
        """
        if not files:
            return []
        try:
            kept = await asyncio.to_thread(self._keep_sync, files)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            needed = sum(len(f.data) for f in files if f.data is not None and len(f.data) <= self.max_bytes)
            raise self._filled(needed, exc) from exc
        if any(k.sha256 for k in kept):
            self._roomy()
        return kept

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
