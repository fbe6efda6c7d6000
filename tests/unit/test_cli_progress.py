"""The terminal progress of `migrate run`: phases as they finish, bytes and rate in flight."""

from __future__ import annotations

import io

from rich.console import Console

from migrate.cli.render import RichProgress, transfer_line


def test_transfer_line_shows_bytes_wire_and_rate() -> None:
    line = transfer_line("rootfs", 12 * 2**20, 3 * 2**20, 40 * 2**20, 0.125)
    assert line == "rootfs: 12.0 MiB of 40.0 MiB (3.0 MiB on the wire), 96.0 MiB/s"
    # no total known, and too early for a meaningful rate
    assert transfer_line("checkpoint", 100, 50, None, 0.0) == "checkpoint: 100 B (50 B on the wire)"


def test_progress_prints_phases_on_a_terminal_only() -> None:
    buf = io.StringIO()
    p = RichProgress(Console(file=buf, force_terminal=True, width=100), enabled=True)
    p.phase("checkpoint", "checkpointing")
    p.transfer("checkpoint", 10, 5, 20)
    p.phase_done("checkpoint", 0.25)
    assert "checkpoint" in buf.getvalue() and "0.250 s" in buf.getvalue()
    quiet = io.StringIO()
    q = RichProgress(Console(file=quiet, force_terminal=False), enabled=False)
    q.phase("checkpoint", "checkpointing")
    q.transfer("checkpoint", 10, 5, 20)
    q.phase_done("checkpoint", 0.25)
    assert quiet.getvalue() == ""
