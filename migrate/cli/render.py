"""How reports, checks, the lab and progress look on a terminal (stdout tables, stderr progress)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrate.cli.app import out
from migrate.core.report import Report, human_bytes


def print_lab_status(st: Any) -> None:
    t = Table(title=f"lab {escape(st.name)} ({st.subnet})")
    for col in ("host", "netns", "address", "daemon", "pid", "", "detail"):
        t.add_column(col)
    for h in st.hosts:
        for d in (h.dockerd, h.sshd):
            mark = "[green]\u2713[/]" if d.healthy else "[bold red]\u2717[/]"
            netns = h.netns if h.netns_present else f"{h.netns} (absent)"
            pid = "-" if d.pid is None else str(d.pid)
            t.add_row(h.host, netns, h.addr, d.kind, pid, mark, escape(d.detail))
        ok = h.mntns_present and h.local_bound
        mark = "[green]\u2713[/]" if ok else "[bold red]\u2717[/]"
        detail = (
            "its own /srv/migrate-lab-local"
            if ok
            else "local dir not bound"
            if h.mntns_present
            else "absent"
        )
        t.add_row(h.host, netns, h.addr, "mount ns", "-", mark, detail)
    out.print(t)


CHECK_MARKS = {"ok": "[green]\u2713[/]", "fail": "[bold red]\u2717[/]", "warn": "[yellow]![/]"}


def print_checks(report: Any, title: str) -> None:
    from migrate.source.check_result import summarize

    t = Table(title=escape(title))
    t.add_column("check", style="bold")
    t.add_column("", justify="center")
    t.add_column("value", overflow="fold")
    t.add_column("fix", overflow="fold")
    for r in report.results:
        value = escape(r.value)
        if r.problem:
            # CRIU's output can run long; the JSON report carries all of it.
            lines = r.problem.splitlines()
            problem = "\n".join(lines[-4:]) if len(lines) > 4 else r.problem
            colour = "red" if r.status == "fail" else "yellow"
            value += f"\n[{colour}]{escape(problem)}[/]"
        t.add_row(r.name, CHECK_MARKS[r.status], value, escape(r.fix))
    out.print(t)
    colour = "green" if report.ready else "bold red"
    out.print(f"[{colour}]{escape(summarize(report.results))}[/]", highlight=False)


class RichProgress:
    """Phases as they finish, and a live line for the transfer in flight (stderr only)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._status: Any = None
        self._t0 = time.monotonic()

    def phase(self, name: str, description: str) -> None:
        self._t0 = time.monotonic()
        if self.enabled:
            self._status = self.console.status(f"{description} ...")
            self._status.start()

    def phase_done(self, name: str, seconds: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.enabled:
            self.console.print(f"  [green]\u2713[/] {name:<11} {seconds:7.3f} s", highlight=False)

    def transfer(self, stream: str, raw: int, wire: int, total: int | None) -> None:
        if self._status is not None:
            self._status.update(
                transfer_line(stream, raw, wire, total, time.monotonic() - self._t0)
            )


def transfer_line(stream: str, raw: int, wire: int, total: int | None, elapsed: float) -> str:
    """`rootfs: 12.0 MiB of 40.0 MiB (3.1 MiB on the wire), 96.0 MiB/s`"""
    of = f" of {human_bytes(total)}" if total else ""
    rate = f", {human_bytes(raw / elapsed)}/s" if elapsed > 0.05 else ""
    return f"{stream}: {human_bytes(raw)}{of} ({human_bytes(wire)} on the wire){rate}"


def print_report(rep: Report) -> None:
    t = Table(title=f"{rep.container} \u2192 {rep.destination} ({rep.status})", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("destination name", f"{rep.dest_name} ({rep.dest_container_id[:12]})")
    t.add_row("strategy", rep.strategy + (f" ({rep.strategy_note})" if rep.strategy_note else ""))
    if rep.stream_channel:
        t.add_row(
            "streams via",
            rep.stream_channel
            + (f" ({rep.stream_channel_note})" if rep.stream_channel_note else ""),
        )
    t.add_row("downtime", "-" if rep.downtime_s is None else f"{rep.downtime_s:.3f} s")
    if rep.postcopy:
        pc = rep.postcopy
        pages = ""
        if "pages_total" in pc:
            pages = (
                f": {pc['pages_total']} pages, {pc.get('pages_on_demand', 0)} fetched on "
                f"demand, {pc.get('pages_background', 0)} pushed in the background"
            )
        t.add_row("post-copy", f"{float(pc.get('postcopy_s', 0)):.3f} s after resuming{pages}")
    t.add_row("total", f"{rep.total_s:.3f} s")
    if rep.staging:
        t.add_row("checkpoint staged", ", ".join(f"{k}: {v}" for k, v in rep.staging.items()))
    b = rep.bytes
    t.add_row(
        "bytes",
        f"{human_bytes(b.raw)} moved, {human_bytes(b.wire)} on the wire "
        f"(image {human_bytes(b.image)}, rootfs {human_bytes(b.rootfs)}, "
        f"checkpoint {human_bytes(b.checkpoint)})",
    )
    if b.rootfs_precopy:
        t.add_row(
            "read-write layer",
            f"{human_bytes(b.rootfs_precopy)} pre-copied while running, "
            f"{human_bytes(b.rootfs)} sent during the pause "
            f"({human_bytes(b.rootfs_kept)} of unchanged files not sent again)",
        )
    t.add_row("phases", ", ".join(f"{k} {v:.3f}s" for k, v in rep.phases.items()))
    t.add_row("source copy", rep.source_action)
    out.print(t)
