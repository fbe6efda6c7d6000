"""Soak: N live migrations of one container under steady writes, A -> B -> A ..., on a lab.

    .venv/bin/python benchmarks/soak.py --lab ms2 --subnet 10.213.19.0/24 [-n 50]

The container counts in memory and appends to a file in its read-write layer ten times a
second. After every migration the counter must have continued (never lower than just before)
and the file must hold every line up to the counter (no write lost). Before the first and
after the last migration, on both hosts, it counts what a leak would leave: containers,
checkpoint directories, containerd restore copies, mounts and network namespaces under the
lab's roots, shims/CRIU/agent processes, staging directories and lock files of these
migrations, unsettled journals. Any difference fails the soak.

Writes benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from migrate.core.journal import DEFAULT_DIR, unsettled
from migrate.lab.config import LabConfig, migrate_executable, to_args
from migrate.lab.hosts import Lab
from migrate.lab.images import BUSYBOX_TAG, ensure_busybox_image

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCKER = "/usr/bin/docker"
WORKLOAD = (
    "i=0; while true; do i=$((i+1)); echo $i >> /data.log; echo $i > /tmp/count.new; "
    "mv /tmp/count.new /tmp/count; sleep 0.1; done"
)


def sh(argv: list[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def docker(lab: Lab, host: str, *args: str) -> str:
    h = lab.host(host)
    return sh([DOCKER, "-H", h.docker_host, *args])


def leaks(lab: Lab) -> dict[str, int]:
    """What a leak would leave, counted on both hosts (only under this lab's own roots)."""
    c = lab.config
    roots = [str(c.paths(h).data_root) for h in ("a", "b")] + [
        str(c.paths(h).exec_root) for h in ("a", "b")
    ]
    mounts = [
        ln
        for ln in Path("/proc/self/mountinfo").read_text().splitlines()
        if any(r in ln for r in roots)
    ]
    procs = 0
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if any(r in cmd for r in roots) and ("shim" in cmd or "criu" in cmd or "runc" in cmd):
            procs += 1
            continue
        try:  # agents started by this lab's sshd carry its SetEnv
            if f"MIGRATE_LAB_NAME={c.name}\0".encode() in (p / "environ").read_bytes():
                procs += 1
        except OSError:
            continue
    out = {
        "containers": sum(len(docker(lab, h, "ps", "-aq").split()) for h in ("a", "b")),
        "checkpoint_dirs": sum(
            len(list((c.paths(h).data_root / "containers").glob("*/checkpoints/*")))
            for h in ("a", "b")
        ),
        "containerd_restore_copies": len(list(Path("/tmp").glob("ctrd-checkpoint*"))),
        "mounts": len(mounts),
        # Live network namespaces: nsfs mounts under the exec roots. (Docker 20.10 leaves an
        # empty, unmounted placeholder file in exec-root/netns for every removed container,
        # migrated or not: `docker run` + `docker rm -f` alone does it; not counted.)
        "netns_mounts": sum(" nsfs " in ln for ln in mounts),
        "processes": procs,
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", default="msoak")
    ap.add_argument("--subnet", default="10.213.21.0/24")
    ap.add_argument("-n", type=int, default=50, help="migrations (A->B and B->A alternate)")
    args = ap.parse_args()

    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    env = lab.env()
    image = ensure_busybox_image(lab.host("a").docker_host, BUSYBOX_TAG).tag
    ensure_busybox_image(lab.host("b").docker_host, BUSYBOX_TAG)
    name = f"soak-{uuid.uuid4().hex[:8]}"
    before = leaks(lab)
    docker(lab, "a", "run", "-d", "--name", name, image, "sh", "-c", WORKLOAD)
    time.sleep(1.0)
    rows: list[dict[str, Any]] = []
    here, there = "a", "b"
    last = 0
    failures: list[str] = []
    t0 = time.monotonic()
    for i in range(args.n):
        p = lab.host(here).run(
            [str(migrate_executable()), "run", name, *to_args(env, there), "--json"],
            env=env,
            check=False,
            timeout=600,
        )
        if p.returncode != 0:
            failures.append(f"#{i} {here}->{there}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
            break
        rep = json.loads(p.stdout)
        count = int(docker(lab, there, "exec", name, "cat", "/tmp/count").strip())
        lines = docker(lab, there, "exec", name, "cat", "/data.log").split()
        ok_log = lines == [str(k) for k in range(1, len(lines) + 1)] and len(lines) >= count - 1
        if count < last or not ok_log:
            failures.append(f"#{i}: state lost (count {count} after {last}, log ok {ok_log})")
        last = count
        rows.append(
            {
                "i": i,
                "from": here,
                "to": there,
                "downtime_s": rep["downtime_s"],
                "total_s": rep["total_s"],
                "count": count,
            }
        )
        print(
            f"#{i:02d} {here}->{there} downtime {rep['downtime_s']:.3f}s total "
            f"{rep['total_s']:.2f}s count {count}",
            flush=True,
        )
        here, there = there, here
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    count = int(docker(lab, here, "exec", name, "cat", "/tmp/count").strip())
    docker(lab, here, "rm", "-f", name)
    time.sleep(1.0)
    after = leaks(lab)
    diff = {k: after[k] - before[k] for k in before if after[k] != before[k]}
    pending = [p.migration_id for p in unsettled(DEFAULT_DIR) if p.name == name]
    if diff:
        failures.append(f"leak: {diff}")
    if pending:
        failures.append(f"unsettled journals: {pending}")
    downs = sorted(r["downtime_s"] for r in rows)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "migrations": len(rows),
        "requested": args.n,
        "elapsed_s": round(elapsed, 1),
        "final_count": count,
        "downtime_s": {"min": downs[0], "median": downs[len(downs) // 2], "max": downs[-1]}
        if downs
        else None,
        "before": before,
        "after": after,
        "failures": failures,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Soak: live migrations under steady writes, A -> B -> A ...",
        "",
        f"{result['date']}; `benchmarks/soak.py -n {args.n}`, busybox counter writing to "
        "memory and appending to a file in its read-write layer every 0.1 s.",
        "",
        f"- migrations done: {len(rows)} of {args.n} in {elapsed:.0f} s",
        f"- downtime: {result['downtime_s']}",
        f"- final counter {count}; every migration continued the counter and kept every line "
        "of the file"
        if not any("state" in f for f in failures)
        else "- STATE LOST",
        "",
        "| resource (both hosts) | before | after |",
        "|---|---|---|",
        *[f"| {k} | {before[k]} | {after[k]} |" for k in before],
        "",
        "Result: "
        + ("**no leak, state intact**" if not failures else "**FAILED**: " + "; ".join(failures)),
        "",
    ]
    (RESULTS / "soak.md").write_text("\n".join(md))
    print("\n".join(md))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
