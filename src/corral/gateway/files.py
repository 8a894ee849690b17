"""Files on disk: uploads and batch outputs, each under an id of the gateway's own.

No path is ever built from client input: a file lives at ``<state>/files/<id>`` where the id is one
this gateway generated (``file-`` and 24 hex digits), checked by pattern before any lookup; the
client's filename is kept only as a label. Every file is written through `AtomicOutput`, so a file
listed here is always whole; a kill mid-upload leaves a ``.part`` that the next start removes.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sinks.output import AtomicOutput
from .db import StateDB, page

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
PURPOSES = ("batch", "batch_output")


@dataclass(slots=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int

    def api(self) -> dict[str, Any]:
        """The File object as OpenAI's API returns it."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def label(filename: str | None) -> str:
    """The client's file name as a label only: its last path component, printable, 255 at most."""
    name = (filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:255] or "upload.jsonl"


class Files:
    def __init__(self, root: Path, db: StateDB) -> None:
        self.folder = root / "files"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = db
        for leftover in self.folder.glob("*.part"):  # a killed upload or output: never listed
            leftover.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise ValueError(f"not a file id of this gateway: {file_id!r}")
        return self.folder / file_id

    def writer(self, file_id: str) -> AtomicOutput:
        """Where a file's bytes go until it is whole: ``<id>.part``, renamed by ``commit()``."""
        return AtomicOutput(self.path(file_id))

    def add(self, record: FileRecord) -> None:
        self.db.execute("INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET bytes = excluded.bytes",
                        (record.id, record.filename, record.purpose, record.bytes, record.created_at))

    def added(self, file_id: str, filename: str, purpose: str) -> FileRecord:
        """Register a file just committed to disk."""
        record = FileRecord(file_id, filename, purpose, self.path(file_id).stat().st_size, int(time.time()))
        self.add(record)
        return record

    def get(self, file_id: str) -> FileRecord | None:
        if not FILE_ID.match(file_id):
            return None
        row = self.db.one("SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?",
                          (file_id,))
        return FileRecord(*row) if row else None

    def page(self, *, limit: int, after: str | None, purpose: str | None,
             newest_first: bool) -> tuple[list[FileRecord], bool]:
        rows, more = page(self.db, "files", limit=limit, after=after,
                          where="purpose = ?" if purpose else "", params=[purpose] if purpose else [],
                          newest_first=newest_first)
        return [FileRecord(*row[1:]) for row in rows], more

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path(file_id).unlink(missing_ok=True)
        return True
