"""Where Docker's own checkpoint and restore spend their time, on one lab host.

    .venv/bin/python benchmarks/restore_probe.py [--lab mb --subnet 10.213.10.0/24] [--mem 256]

Runs the memfill workload (benchmarks/memfill.c) on lab host b, then times
`docker checkpoint create` and `docker start --checkpoint` while sampling, every 20 ms:
  - the CRIU process(es) under that host's containerd (when CRIU itself runs),
  - bytes in containerd's content store (ingest/ and blobs/),
  - bytes in the checkpoint directory Docker keeps (containers/<id>/checkpoints/<name>/),
  - bytes in new `ctrd-checkpoint*` directories (containerd's unpacked copy for CRIU),
and prints a timeline: when each of these started and stopped changing. The memory checksum
is compared after the restore. Writes benchmarks/results/restore-probe-<MEM>mb.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench_run import IMAGE, Case, build_workload_image, docker, request_sum, start_workload

from migrate.engines.docker import containerd
from migrate.engines.docker.criu_log import LogHolder
from migrate.lab.config import LabConfig
from migrate.lab.hosts import Lab, LabHost

RESULTS = Path(__file__).resolve().parent / "results"
EVERY_S = 0.02
MiB = 1 << 20


def tree_bytes(root: Path) -> int:
    total = 0
    for dp, _d, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return total


@dataclass
class Series:
    """When a sampled quantity first and last changed, and its peak."""

    first: float | None = None
    last: float | None = None
    peak: int = 0
    prev: int | None = None

    def add(self, t: float, v: int) -> None:
        if self.prev is not None and v != self.prev:
            self.first = t if self.first is None else self.first
            self.last = t
        self.peak = max(self.peak, v)
        self.prev = v


@dataclass
class Timeline:
    series: dict[str, Series] = field(default_factory=dict)
    criu: list[float] = field(default_factory=list)  # sample times CRIU was running

    def add(self, name: str, t: float, v: int) -> None:
        self.series.setdefault(name, Series()).add(t, v)


def criu_pids(containerd_sock: str) -> list[int]:
    """CRIU processes run for this containerd: a shim (`-address <its socket>`, reparented to
    init) runs runc, which runs CRIU."""
    out = []
    needle = containerd_sock.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if Path(f"/proc/{d}/comm").read_text().strip() != "criu":
                continue
            pid, hops = int(d), 0
            while pid > 1 and hops < 8:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(d))
                    break
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])
                hops += 1
        except (OSError, ValueError, IndexError):
            continue
    return out


class Sampler:
    def __init__(self, lab: Lab, cp_dir: Path) -> None:
        p = lab.config.paths("b")
        self.containerd_sock = str(p.containerd_socket)
        content = p.data_root / "containerd" / "daemon" / "io.containerd.content.v1.content"
        self.ingest, self.blobs = content / "ingest", content / "blobs"
        self.cp_dir = cp_dir
        self.before = set(Path("/tmp").glob("ctrd-checkpoint*"))
        self.tl = Timeline()
        self._stop = threading.Event()
        self._t0 = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> Timeline:
        self._stop.set()
        self._thread.join()
        return self.tl

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self._t0
            if criu_pids(self.containerd_sock):
                self.tl.criu.append(t)
            self.tl.add("containerd content ingest/", t, tree_bytes(self.ingest))
            self.tl.add("containerd content blobs/", t, tree_bytes(self.blobs))
            self.tl.add("Docker's checkpoint dir", t, tree_bytes(self.cp_dir))
            new = [d for d in Path("/tmp").glob("ctrd-checkpoint*") if d not in self.before]
            self.tl.add("/tmp/ctrd-checkpoint* (new)", t, sum(tree_bytes(d) for d in new))
            self._stop.wait(EVERY_S)


def timed(lab: Lab, cp_dir: Path, fn: object) -> tuple[float, Timeline]:
    s = Sampler(lab, cp_dir)
    s.start()
    t0 = time.monotonic()
    assert callable(fn)
    fn()
    dt = time.monotonic() - t0
    time.sleep(0.1)
    return dt, s.stop()


def render(title: str, seconds: float, tl: Timeline) -> list[str]:
    out = [
        f"### {title}: {seconds:.2f} s",
        "",
        "| what | changed from | to | peak |",
        "|---|---:|---:|---:|",
    ]
    if tl.criu:
        out.append(f"| CRIU process running | {tl.criu[0]:.2f} s | {tl.criu[-1]:.2f} s | |")
    else:
        out.append("| CRIU process running | not seen | | |")
    for name, s in tl.series.items():
        if s.first is None:
            out.append(f"| {name} | unchanged | | {s.peak / MiB:.0f} MiB |")
        else:
            out.append(f"| {name} | {s.first:.2f} s | {s.last:.2f} s | {s.peak / MiB:.0f} MiB |")
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=os.environ.get("MIGRATE_BENCH_LAB", "mbench"))
    ap.add_argument("--subnet", default=os.environ.get("MIGRATE_BENCH_SUBNET", "10.213.20.0/24"))
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument(
        "--pages-elsewhere",
        action="store_true",
        help="experiment: before the restore, move pages-*.img out of Docker's "
        "checkpoint dir and leave absolute symlinks to them in their place",
    )
    args = ap.parse_args()
    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    b: LabHost = lab.host("b")
    build_workload_image(b)
    name = f"probe-{uuid.uuid4().hex[:6]}"
    cp = "probe"
    try:
        upper = start_workload(b, name, Case(args.mem, 0))
        before = request_sum(b, name, upper, 0)
        cid = docker(b, "inspect", "-f", "{{.Id}}", name)
        root = Path(docker(b, "info", "-f", "{{.DockerRootDir}}"))
        cp_dir = root / "containers" / cid / "checkpoints" / cp
        t_dump, tl_dump = timed(lab, cp_dir, lambda: docker(b, "checkpoint", "create", name, cp))
        if args.pages_elsewhere:
            elsewhere = root / f"migrate-probe-{uuid.uuid4().hex[:8]}"  # same filesystem
            elsewhere.mkdir()
            for img in cp_dir.glob("pages-*.img"):
                img.rename(elsewhere / img.name)
                img.symlink_to(elsewhere / img.name)
        task = lab.config.paths("b").exec_root / "containerd" / "daemon"
        holder = LogHolder(
            task / "io.containerd.runtime.v2.task" / "moby" / cid / "work" / "restore.log"
        )
        holder.start()
        try:
            t_rest, tl_rest = timed(
                lab, cp_dir, lambda: docker(b, "start", "--checkpoint", cp, name)
            )
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nCRIU restore log, last lines:\n{holder.tail()}") from None
        finally:
            holder.stop()
        after = request_sum(b, name, upper, before[0])
        ok = after[1] == before[1]
        images = tree_bytes(cp_dir)
    finally:
        if "cp_dir" in locals():
            for d in containerd.restore_copies(lab.config.paths("b").exec_root, cp_dir):
                shutil.rmtree(d, ignore_errors=True)
        docker(b, "rm", "-f", name, check=False)
        docker(b, "rmi", IMAGE, check=False)
        if "elsewhere" in locals():
            shutil.rmtree(elsewhere, ignore_errors=True)
    lines = [
        f"# Docker's checkpoint and restore, {args.mem} MiB process (memfill), one lab host"
        + (
            " (pages-*.img replaced by symlinks before the restore)" if args.pages_elsewhere else ""
        ),
        "",
        f"`benchmarks/restore_probe.py --mem {args.mem}"
        f"{' --pages-elsewhere' if args.pages_elsewhere else ''}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"lab `{args.lab}` host b. Checkpoint images: {images / MiB:.0f} MiB. Memory checksum "
        f"after the restore: {'identical' if ok else 'DIFFERENT'}. Sampled every "
        f"{EVERY_S * 1000:.0f} ms; times from the start of the command.",
        "",
        *render("docker checkpoint create", t_dump, tl_dump),
        *render("docker start --checkpoint", t_rest, tl_rest),
    ]
    text = "\n".join(lines)
    suffix = "-pages-elsewhere" if args.pages_elsewhere else ""
    (RESULTS / f"restore-probe-{args.mem}mb{suffix}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
