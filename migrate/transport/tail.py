"""A bounded buffer for the last bytes an agent wrote to its stderr."""

from __future__ import annotations

import threading

# Enough for a CRIU or Python traceback; an agent that spews megabytes keeps only the end.
DEFAULT_TAIL_BYTES = 64 * 1024
DEFAULT_TAIL_LINES = 40


class StderrTail:
    """Keeps the last ``limit`` bytes written; safe to feed from a drain thread."""

    def __init__(self, limit: int = DEFAULT_TAIL_BYTES) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.total = 0

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            self._buf += data
            excess = len(self._buf) - self.limit
            if excess > 0:
                del self._buf[:excess]

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._buf)

    def text(self, max_lines: int = DEFAULT_TAIL_LINES) -> str:
        """The last ``max_lines`` lines, decoded leniently (stderr is not always UTF-8)."""
        lines = self.data().decode("utf-8", errors="replace").splitlines()
        if self.total > self.limit and lines:
            if len(lines) > 1:
                # The first line was cut by the ring buffer: a fragment misleads more than it helps.
                lines = lines[1:]
            else:
                lines[0] = "..." + lines[0]
        return "\n".join(lines[-max_lines:]).strip()
