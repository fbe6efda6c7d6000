"""What one CRIU dump of a paused container costs, A/B in the same minutes, on lab host a.

Two questions from issue 8 (results in benchmarks/results/staging.md):

- ``--compare staging``: the same 256 MiB container dumped (runc checkpoint --leave-running,
  migrate's own path: engines/docker/runc.py) into the disk staging area vs into tmpfs.
- ``--compare rw``: a 256 MiB container with an empty read-write layer vs one that wrote 1 GiB
  of files into it (written back, its page cache charged to the container's memory cgroup),
  both dumped to the same place: does the layer make the dump slower?

Each round alternates the order of the two arms; one JSON line per dump on stdout, medians at
the end. Runs as root on this machine's lab (MIGRATE_BENCH_LAB / MIGRATE_BENCH_SUBNET).

    .venv/bin/python benchmarks/dump_probe.py --compare staging --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_run as br  # noqa: E402

from migrate.engines.docker.engine import DockerEngine  # noqa: E402
from migrate.lab.config import LabConfig  # noqa: E402
from migrate.lab.hosts import Lab  # noqa: E402

DISK = Path("/var/lib/migrate/probe-dump")
MEMORY = Path("/dev/shm/migrate-probe-dump")


def cgroup_cache_mib(eng: DockerEngine, name: str) -> int | None:
    """Page cache charged to the container's memory cgroup (v1 layout), MiB."""
    cid = eng.state(name).id
    for p in Path("/sys/fs/cgroup/memory").rglob(f"*{cid}*"):
        stat = p / "memory.stat"
        if stat.exists():
            fields = dict(line.split() for line in stat.read_text().splitlines())
            return int(fields["cache"]) >> 20
    return None


def dump(eng: DockerEngine, name: str, where: Path) -> float:
    shutil.rmtree(where, ignore_errors=True)
    eng.pause(name)
    try:
        t0 = time.perf_counter()
        eng.checkpoint(name, where / "img", where / "work")
        return time.perf_counter() - t0
    finally:
        eng.unpause(name)
        shutil.rmtree(where, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=("staging", "rw"), required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--lab", default=os.environ.get("MIGRATE_BENCH_LAB", "mbench"))
    ap.add_argument("--subnet", default=os.environ.get("MIGRATE_BENCH_SUBNET", "10.213.20.0/24"))
    args = ap.parse_args()

    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    a = lab.host("a")
    if not br.docker(a, "images", "-q", br.IMAGE, check=False):
        br.build_workload_image(a)
    eng = DockerEngine(a.docker_host)
    if args.compare == "staging":
        arms = {"disk": ("probe-rw0", 0, DISK), "memory": ("probe-rw0", 0, MEMORY)}
    else:
        arms = {"rw0": ("probe-rw0", 0, DISK), "rw1g": ("probe-rw1g", 1024, DISK)}
    names = {name: rw for name, rw, _ in arms.values()}
    try:
        for name, rw in names.items():
            br.docker(a, "rm", "-f", name, check=False)
            br.start_workload(a, name, br.Case(mem_mb=args.mem, rw_mb=rw))
        os.sync()  # the layer written back: only its page cache remains
        results: dict[str, list[float]] = {k: [] for k in arms}
        for i in range(args.rounds):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))
            for arm in order:
                name, _, where = arms[arm]
                cache = cgroup_cache_mib(eng, name)
                s = dump(eng, name, where)
                results[arm].append(s)
                print(
                    json.dumps(
                        {"arm": arm, "round": i, "dump_s": round(s, 3), "cgroup_cache_mib": cache}
                    ),
                    flush=True,
                )
        for arm, v in results.items():
            print(
                f"{arm}: median {statistics.median(v):.3f} s, "
                f"runs {', '.join(f'{x:.3f}' for x in sorted(v))}"
            )
    finally:
        for name in names:
            br.docker(a, "rm", "-f", name, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
