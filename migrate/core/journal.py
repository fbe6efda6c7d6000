"""Durable, append-only journals: each record is written and fsynced before the step it records.

The agent's ``committed`` record is the point of no return of a migration (DESIGN.md).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(os.environ.get("MIGRATE_STATE_DIR", "/var/lib/migrate"))


@dataclass(frozen=True)
class Record:
    event: str
    time: float
    data: dict[str, Any]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_migration(cls, role: str, migration_id: str, base: Path | None = None) -> Journal:
        if not migration_id.replace("-", "").isalnum() or len(migration_id) > 64:
            raise ValueError("bad migration id")
        return cls((base or DEFAULT_DIR) / "journal" / role / f"{migration_id}.jsonl")

    def append(self, event: str, **data: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "time": time.time(), "data": data}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        # The directory entry must be durable too, the first time.
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def records(self) -> list[Record]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                d = json.loads(line)
                out.append(Record(str(d["event"]), float(d["time"]), dict(d.get("data") or {})))
            except (ValueError, KeyError, TypeError):
                break  # a torn last line: the step it announced did not happen
        return out

    def last(self) -> str:
        recs = self.records()
        return recs[-1].event if recs else ""


# Last source-journal events after which nothing is left to settle.
# postcopy_failed: settled as far as the tool goes; no rollback exists and the operator
# decides between the copies (docs/architecture.md, "Post-copy").
SETTLED = frozenset({"done", "rolled_back", "recovered", "postcopy_failed"})


@dataclass(frozen=True)
class Pending:
    """A source-side migration that did not reach a settled end (killed, in doubt...)."""

    migration_id: str
    container_id: str
    name: str
    destination: str
    dest_name: str
    keep_source: bool
    last: str
    journal: Journal


def unsettled(base: Path | None = None) -> list[Pending]:
    """Source journals whose last record is not a settled end, oldest first."""
    root = (base or DEFAULT_DIR) / "journal" / "source"
    try:
        files = sorted(root.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []
    out = []
    for f in files:
        j = Journal(f)
        recs = j.records()
        if not recs or recs[-1].event in SETTLED:
            continue
        first = next((r for r in recs if r.event == "precheck"), None)
        if first is None:
            continue
        d = first.data
        out.append(
            Pending(
                migration_id=f.stem,
                container_id=str(d.get("container", "")),
                name=str(d.get("name", "")),
                destination=str(d.get("destination", "")),
                dest_name=str(d.get("dest_name", "")),
                keep_source=bool(d.get("keep_source", False)),
                last=recs[-1].event,
                journal=j,
            )
        )
    return out
