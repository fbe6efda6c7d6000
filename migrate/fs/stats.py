"""What a capture or an apply did: frozen statistics, and the counters behind them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar


@dataclass(frozen=True)
class CaptureStats:
    members: int = 0
    files: int = 0  # regular files with their own data (hard links excluded)
    bytes: int = 0  # file data put in the stream (holes excluded)
    stream_bytes: int = 0  # tar bytes produced so far
    hardlinks: int = 0
    whiteouts: int = 0
    sparse_files: int = 0
    skipped: int = 0  # sockets and other types tar cannot carry
    kept: int = 0  # regular files sent as "keep" (the destination has them from a pre-copy)
    kept_bytes: int = 0  # their size
    vanished: int = 0  # names gone or replaced while a live tree was read (pre-copy)


@dataclass(frozen=True)
class ApplyStats:
    members: int = 0
    files: int = 0
    bytes: int = 0
    stream_bytes: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    sparse_files: int = 0
    kept: int = 0  # delta: files left as the pre-copy wrote them
    removed: int = 0  # delta: names removed (gone on the source since the pre-copy)


_S = TypeVar("_S", CaptureStats, ApplyStats)


class Tally:
    """Mutable counters behind the frozen stats (updated per member, snapshotted on demand)."""

    def __init__(self) -> None:
        self.members = self.files = self.bytes = self.stream_bytes = 0
        self.hardlinks = self.whiteouts = self.sparse_files = self.skipped = 0
        self.kept = self.kept_bytes = self.vanished = self.removed = 0

    def snapshot(self, cls: type[_S]) -> _S:
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})
