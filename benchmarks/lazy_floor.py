"""Where a post-copy (lazy) migration's downtime goes, step by step, with CRIU's own logs.

    .venv/bin/python benchmarks/lazy_floor.py [--mem 64,1024] [--reps 5] [--keep DIR]
    .venv/bin/python benchmarks/lazy_floor.py --floor [--reps 7]

Runs on lab hosts a and b (MIGRATE_BENCH_LAB / MIGRATE_BENCH_SUBNET, as bench_run.py), from
this process, the same engine calls `migrate run --strategy lazy` makes inside its downtime,
without the SSH hops: pause on a, runc's lazy dump (page server on the loopback), the small
images hard-linked into b's checkpoint directory, b's lazy-pages daemon (fetching straight
from the page server, no relay), Docker's `start --checkpoint` on b under the temporary
runc.conf, until b says running. Each step is timed on the wall clock, and CRIU's dump.log and
restore.log (which carry their own timestamps) and b's dockerd log are kept, so the steps
inside runc, containerd and CRIU can be placed on the same time line. The memory hash is
verified on b after every run (the workload of bench_run.py).

--floor: the floor of Docker's own restore path on this machine: `docker start` of a created
container of the same image (no checkpoint), and `docker start --checkpoint` of a small
(a few MB) container's plain (non-lazy) checkpoint.

Not part of migrate: a measuring tool. Writes nothing but its JSON (stdout or --json FILE)
and, with --keep, the logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_run import (
    DOCKER,
    IMAGE,
    Case,
    build_workload_image,
    clear_b,
    docker,
    inspect,
    request_sum,
    start_workload,
    upper_dir,
    verify_on_b,
)

from migrate.checkpoint import criu, lazy_pages
from migrate.engines.base import LazyRestore
from migrate.engines.docker.engine import DockerEngine
from migrate.lab.config import LabConfig
from migrate.lab.hosts import Lab

_TS = re.compile(r"^\((\d+)\.(\d+)\)")


def criu_lines(path: Path) -> list[tuple[float, str]]:
    """(seconds since CRIU started, text) of each timestamped line of a CRIU log."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = _TS.match(line)
        if m:
            out.append((int(m.group(1)) + int(m.group(2)) / 1e6, line[m.end() :].strip()))
    return out


def first(lines: list[tuple[float, str]], pattern: str) -> float | None:
    rx = re.compile(pattern)
    for t, s in lines:
        if rx.search(s):
            return t
    return None


def last(lines: list[tuple[float, str]], pattern: str) -> float | None:
    rx = re.compile(pattern)
    found = None
    for t, s in lines:
        if rx.search(s):
            found = t
    return found


# Marks in CRIU's logs (their text in CRIU 4.2.1), in the order they appear.
DUMP_MARKS = [
    ("dump: start", r"Version:|Dumping processes"),
    ("dump: network lock", r"Lock network"),
    ("dump: freeze seized", r"Seizing|seize"),
    ("dump: collect namespaces/mounts", r"Dumping mount namespaces|Collecting mount|mnt"),
    ("dump: parasite in", r"Infecting|Parasite syscall_ip|parasite"),
    ("dump: pagemap/mm", r"Dumping pages|mm\b|Dumping mm"),
    ("dump: writing done", r"Writing stats|Dumping finished successfully|page-server|Lazy"),
]


def run_once(
    lab: Lab, layers: tuple[str, ...], mem: int, keep: Path | None, conf_extra: str
) -> dict[str, Any]:
    a, b = lab.host("a"), lab.host("b")
    name = f"lzf-{uuid.uuid4().hex[:6]}"
    case = Case(mem, 0, layers=layers)
    clear_b(b, name, layers)
    # The image on b (the probe measures the downtime, not the image transfer).
    save = a.argv(["env", f"DOCKER_HOST={a.docker_host}", DOCKER, "save", IMAGE])
    load = b.argv(["env", f"DOCKER_HOST={b.docker_host}", DOCKER, "load"])
    with subprocess.Popen(save, stdout=subprocess.PIPE) as saver:
        subprocess.run(load, stdin=saver.stdout, check=True, capture_output=True)
    if saver.returncode != 0:
        raise RuntimeError(f"docker save {IMAGE} on a failed ({saver.returncode})")
    ea = DockerEngine(a.docker_host)
    eb = DockerEngine(b.docker_host)
    staging = Path(tempfile.mkdtemp(prefix="lzf-", dir="/var/tmp"))
    work = Path("/run/migrate") / f"lzf-{name[-6:]}"
    res: dict[str, Any] = {"mem": mem, "name": name}
    page_server = None
    daemon = None
    try:
        upper_a = start_workload(a, name, case)
        before = request_sum(a, name, upper_a, 0)
        spec = ea.spec(name)
        cid_b = eb.create(spec, name, keep_volume_names=True)
        upper_b = upper_dir(b, name)
        subprocess.run(["cp", "-a", f"{upper_a}/.", str(upper_b)], check=True)
        img, wdir = staging / "checkpoint", staging / "work"
        criu_bin = criu.find_criu()
        assert criu_bin is not None
        env_before = dict(os.environ)
        if conf_extra:
            cfg = staging / "criu.conf"
            cfg.write_text(conf_extra)
            os.environ["CRIU_CONFIG_FILE"] = str(cfg)
        t = {"t0_pause": time.time()}
        ea.pause(name)
        t["paused"] = time.time()
        page_server = ea.start_lazy_checkpoint(name, img, wdir)
        t["dump_ready"] = time.time()
        os.environ.clear()
        os.environ.update(env_before)
        target = eb.checkpoint_dir(cid_b, "lzf")
        shutil.copytree(img, target, copy_function=os.link)
        t["images_linked"] = time.time()
        shutil.rmtree(work, ignore_errors=True)
        daemon = lazy_pages.LazyPagesDaemon(
            criu_bin, img, work, verbosity=4, page_server=("127.0.0.1", page_server.port)
        )
        t["daemon_up"] = time.time()
        eb.start_from_checkpoint(cid_b, "lzf", lazy=LazyRestore(work_dir=work))
        t["docker_start_returned"] = time.time()
        while True:
            st = eb.state(cid_b)
            if st.running and not st.paused:
                break
            time.sleep(0.002)
        t["running"] = time.time()
        daemon.wait(600)
        page_server.wait(120)
        shutil.copy(work / "restore.log", staging / "restore.log")
        # CRIU's log times count from its own start: the files' birth times place them.
        t["criu_dump_start"] = btime(wdir / "dump.log")
        t["criu_daemon_start"] = btime(work / "lazy-pages.log")
        t["criu_restore_start"] = btime(work / "restore.log")
        res["verified"] = verify_on_b(b, name, before)
        res["t"] = t
        res["steps"] = {
            "pause": t["paused"] - t["t0_pause"],
            "lazy dump (runc+CRIU, until status-fd)": t["dump_ready"] - t["paused"],
            "images hard-linked": t["images_linked"] - t["dump_ready"],
            "lazy-pages daemon start": t["daemon_up"] - t["images_linked"],
            "docker start --checkpoint": t["docker_start_returned"] - t["daemon_up"],
            "until inspect says running": t["running"] - t["docker_start_returned"],
        }
        res["downtime"] = t["running"] - t["t0_pause"]
        dump = criu_lines(wdir / "dump.log")
        rest = criu_lines(staging / "restore.log")
        res["dump_log"] = [(round(x, 4), s) for x, s in dump]
        res["restore_log"] = [(round(x, 4), s) for x, s in rest]
        res["dockerd_b"] = dockerd_lines(lab, "b", t["t0_pause"], t["running"] + 0.05)
        res["dockerd_a"] = dockerd_lines(lab, "a", t["t0_pause"], t["dump_ready"] + 0.05)
        if keep is not None:
            d = keep / f"{mem}-{name}"
            d.mkdir(parents=True, exist_ok=True)
            for f in ("dump.log",):
                if (wdir / f).exists():
                    shutil.copy(wdir / f, d / f)
            if (staging / "restore.log").exists():
                shutil.copy(staging / "restore.log", d / "restore.log")
            if (work / "lazy-pages.log").exists():
                shutil.copy(work / "lazy-pages.log", d / "lazy-pages.log")
            (d / "dockerd-b.log").write_text("\n".join(res["dockerd_b"]))
            (d / "dockerd-a.log").write_text("\n".join(res["dockerd_a"]))
            (d / "times.json").write_text(json.dumps(t, indent=1))
        return res
    finally:
        if daemon is not None:
            daemon.kill()
        if page_server is not None:
            page_server.kill()
        docker(a, "rm", "-f", name, check=False)
        docker(b, "rm", "-f", name, check=False)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def btime(path: Path) -> float:
    """Birth time of a file (statx through stat(1)); 0.0 where the file system has none."""
    p = subprocess.run(
        ["stat", "-c", "%.9W", str(path)], capture_output=True, text=True, check=False
    )
    try:
        return float(p.stdout.strip() or 0)
    except ValueError:
        return 0.0


def dockerd_lines(lab: Lab, host: str, t0: float, t1: float) -> list[str]:
    """dockerd's (and its containerd's) log lines between two wall-clock times."""
    import datetime

    path = lab.config.paths(host).dockerd_log
    out = []
    try:
        with open(path, errors="replace") as f:
            f.seek(max(0, os.path.getsize(path) - (4 << 20)))
            for line in f:
                m = re.search(r'time="([0-9T:.\-]+)Z?"', line)
                if not m:
                    continue
                s = m.group(1).rstrip("Z")
                main, _, frac = s.partition(".")
                dt = datetime.datetime.fromisoformat(main).replace(tzinfo=datetime.UTC)
                ts = dt.timestamp() + float("0." + (frac or "0"))
                if t0 <= ts <= t1:
                    out.append(f"{ts - t0:+.4f} {line.strip()[:300]}")
    except OSError:
        pass
    return out


DUMP_EVENTS = [
    ("CRIU dump: kernel features probed", r"Found task size"),
    ("CRIU dump: vdso/cpu probed (kdat done)", r"^cpu: x86_family|cg-prop: Parsing controller"),
    ("CRIU dump: freezer cgroup frozen, tasks seized", r"^Seized task"),
    ("CRIU dump: network lock start", r"^net: Lock network"),
    ("CRIU dump: network locked (next step)", r"query-ext-files"),
    ("CRIU dump: namespaces dumped (mnt, net, ...)", r"Namespaces dump complete"),
    ("CRIU dump: images written, page server starts", r"Starting lazy pages server"),
    ("CRIU dump: status-ready (runc writes status-fd)", r"Running status-ready scripts"),
]
RESTORE_EVENTS = [
    ("CRIU restore: kernel features probed", r"Found task size"),
    (
        "CRIU restore: setup-namespaces hook (runc prestart hooks) start",
        r"Running setup-namespaces",
    ),
    ("CRIU restore: setup-namespaces hook done", r"cg: Move into"),
    ("CRIU restore: post-setup-namespaces (mounts done)", r"Running post-setup-namespaces"),
    ("CRIU restore: tasks restored (restorer done)", r": Restored$"),
    ("CRIU restore: post-restore hook (runc) start", r"Running post-restore scripts"),
    ("CRIU restore: network unlock start", r"^net: Unlock network"),
    ("CRIU restore: after network unlock (next line)", r"seccomp: Restoring mode|Run late stage"),
    ("CRIU restore: finished, tasks resumed", r"Restore finished successfully"),
]


def timeline(r: dict[str, Any]) -> list[tuple[float, str]]:
    """Every event of one run, seconds after the pause started."""
    t = r["t"]
    t0 = t["t0_pause"]
    ev: list[tuple[float, str]] = [
        (t["paused"], "docker pause returned"),
        (t["dump_ready"], "runc status-fd: dump images ready (migrate's checkpoint ends)"),
        (t["images_linked"], "images hard-linked into b's checkpoint dir"),
        (t["criu_daemon_start"], "lazy-pages daemon: CRIU starts"),
        (t["daemon_up"], "lazy-pages daemon socket up; docker start --checkpoint called"),
        (t["docker_start_returned"], "docker start --checkpoint returned"),
        (t["running"], "inspect: running"),
    ]
    if t.get("criu_dump_start"):
        ev.append((t["criu_dump_start"], "CRIU dump starts (dump.log created)"))
        for label, rx in DUMP_EVENTS:
            x = first([(a, b) for a, b in r["dump_log"]], rx)
            if x is not None:
                ev.append((t["criu_dump_start"] + x, label))
    if t.get("criu_restore_start"):
        ev.append((t["criu_restore_start"], "CRIU restore starts (restore.log created)"))
        for label, rx in RESTORE_EVENTS:
            x = first([(a, b) for a, b in r["restore_log"]], rx)
            if x is not None:
                ev.append((t["criu_restore_start"] + x, label))
    for line in r.get("dockerd_b", []):
        if "starting signal loop" in line:
            ev.append((t0 + float(line.split()[0]), "containerd-shim started (dockerd log)"))
            break
    return sorted((x - t0, label) for x, label in ev)


# The downtime cut into consecutive segments, each between two events of timeline() (the
# first event of a segment's start label found). Medians are taken per segment.
SEGMENTS = [
    ("docker pause", None, "docker pause returned"),
    (
        "runc start, runc's CRIU version + lazy-pages feature checks, CRIU start",
        "docker pause returned",
        "CRIU dump starts (dump.log created)",
    ),
    (
        "CRIU dump: kernel feature probing (no kdat cache: /run is not tmpfs here)",
        "CRIU dump starts (dump.log created)",
        "CRIU dump: vdso/cpu probed (kdat done)",
    ),
    (
        "CRIU dump: freezer check, seize",
        "CRIU dump: vdso/cpu probed (kdat done)",
        "CRIU dump: freezer cgroup frozen, tasks seized",
    ),
    (
        "CRIU dump: network lock",
        "CRIU dump: network lock start",
        "CRIU dump: network locked (next step)",
    ),
    (
        "CRIU dump: files, mm (pagemap scan), mounts, netns, cgroups, images written",
        "CRIU dump: network locked (next step)",
        "CRIU dump: images written, page server starts",
    ),
    (
        "status-ready -> runc's status-fd -> migrate",
        "CRIU dump: images written, page server starts",
        "runc status-fd: dump images ready (migrate's checkpoint ends)",
    ),
    (
        "images to b's checkpoint dir (hard links; migrate: the stream)",
        "runc status-fd: dump images ready (migrate's checkpoint ends)",
        "images hard-linked into b's checkpoint dir",
    ),
    (
        "lazy-pages daemon start (CRIU, its kernel probing, socket)",
        "images hard-linked into b's checkpoint dir",
        "lazy-pages daemon socket up; docker start --checkpoint called",
    ),
    (
        "dockerd -> containerd (checkpoint into content store) -> shim started",
        "lazy-pages daemon socket up; docker start --checkpoint called",
        "containerd-shim started (dockerd log)",
    ),
    (
        "shim -> runc restore -> runc's CRIU version check -> CRIU start",
        "containerd-shim started (dockerd log)",
        "CRIU restore starts (restore.log created)",
    ),
    (
        "CRIU restore: kernel feature probing, images read",
        "CRIU restore starts (restore.log created)",
        "CRIU restore: setup-namespaces hook (runc prestart hooks) start",
    ),
    (
        "runc prestart hook: Docker's libnetwork-setkey (exec of dockerd, network setup)",
        "CRIU restore: setup-namespaces hook (runc prestart hooks) start",
        "CRIU restore: setup-namespaces hook done",
    ),
    (
        "CRIU restore: cgroups, mount namespace, tasks, memory mappings (lazy: uffd)",
        "CRIU restore: setup-namespaces hook done",
        "CRIU restore: tasks restored (restorer done)",
    ),
    (
        "CRIU restore: post-restore hook (runc), ghosts",
        "CRIU restore: tasks restored (restorer done)",
        "CRIU restore: network unlock start",
    ),
    (
        "CRIU restore: network unlock (iptables-restore x2 unless skipped)",
        "CRIU restore: network unlock start",
        "CRIU restore: after network unlock (next line)",
    ),
    (
        "CRIU restore: restorer finishes, tasks resumed",
        "CRIU restore: after network unlock (next line)",
        "CRIU restore: finished, tasks resumed",
    ),
    (
        "runc -> shim -> containerd -> dockerd: start returns",
        "CRIU restore: finished, tasks resumed",
        "docker start --checkpoint returned",
    ),
    ("until inspect says running", "docker start --checkpoint returned", "inspect: running"),
]


def segments(r: dict[str, Any]) -> dict[str, float]:
    ev: dict[str, float] = {}
    for x, label in timeline(r):
        ev.setdefault(label, x)
    ev.setdefault("pause", 0.0)
    out = {}
    for name, a, b in SEGMENTS:
        start = 0.0 if a is None else ev.get(a)
        if start is not None and b in ev:
            out[name] = ev[b] - start
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (memory, variant): median downtime and median duration of each segment, over the
    verified runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("verified"):
            groups.setdefault(f"{r['mem']} MiB {r.get('variant', 'skip')}", []).append(r)
    out: dict[str, Any] = {}
    for key, rs in groups.items():
        segs = [segments(r) for r in rs]
        names = [n for n, _, _ in SEGMENTS]
        out[key] = {
            "n": len(rs),
            "downtime": statistics.median(r["downtime"] for r in rs),
            "downtimes": [round(r["downtime"], 3) for r in rs],
            "segments": {
                n: statistics.median(sg[n] for sg in segs if n in sg)
                for n in names
                if any(n in sg for sg in segs)
            },
        }
    return out


def from_kept(lab: Lab, kept: Path, bench_json: Path) -> list[dict[str, Any]]:
    """Runs of `migrate run --strategy lazy` (bench_run.py --keep-criu-logs KEPT), in the shape
    run_once() gives, from: the CRIU logs kept by source and agent (with birth times), the
    source's journal (when it paused), the agent's journal (when the restore call arrived)
    and the bench report (phases and restore steps, matched by the destination container)."""
    doc = json.loads(bench_json.read_text())
    reports = {}
    for c in doc["cases"]:
        lz = c.get("lazy")
        if lz and lz.get("report"):
            reports[lz["report"]["dest_container_id"]] = (c["mem_mb"], lz)
    runs = []
    journals = Path("/var/lib/migrate/journal")
    for src in sorted(kept.glob("*-source")):
        mid = src.name.removesuffix("-source")
        dst = kept / f"{mid}-dest"
        if not (journals / "source" / f"{mid}.jsonl").exists() or not dst.is_dir():
            continue  # refused before it paused: nothing to place
        recs = [
            json.loads(x) for x in (journals / "source" / f"{mid}.jsonl").read_text().splitlines()
        ]
        arec = [
            json.loads(x) for x in (journals / "agent" / f"{mid}.jsonl").read_text().splitlines()
        ]
        ev = {r["event"]: r for r in recs}
        dest_id = ev["prepared"]["data"]["dest_container_id"]
        if dest_id not in reports:
            continue
        mem, lz = reports[dest_id]
        rep = lz["report"]
        ph = rep["phases"]
        t0 = ev["pausing"]["time"]
        restoring = next(r["time"] for r in arec if r["event"] == "restoring")
        bs = json.loads((src / "btime.json").read_text())
        bd = json.loads((dst / "btime.json").read_text())
        daemon_up = restoring + ph.get("restore.images", 0) + ph.get("restore.daemon", 0)
        t = {
            "t0_pause": t0,
            "paused": t0 + ph["freeze"],
            "dump_ready": t0 + ph["freeze"] + ph["checkpoint"],
            "images_linked": restoring,
            "criu_daemon_start": bd.get("lazy-pages.log", 0.0),
            "daemon_up": daemon_up,
            "docker_start_returned": daemon_up + ph.get("restore.docker_start", 0),
            "running": t0 + rep["downtime_s"],
            "criu_dump_start": bs.get("dump.log", 0.0),
            "criu_restore_start": bd.get("restore.log", 0.0),
        }
        runs.append(
            {
                "mem": mem,
                "name": mid,
                "variant": "migrate run",
                "verified": lz.get("verified"),
                "t": t,
                "downtime": rep["downtime_s"],
                "steps": {k: v for k, v in ph.items() if k.startswith("restore")},
                "dump_log": criu_lines(src / "dump.log"),
                "restore_log": criu_lines(dst / "restore.log"),
                "dockerd_b": dockerd_lines(lab, "b", t0, t["running"] + 0.05),
            }
        )
    return runs


def _api_start(engine: DockerEngine, ref: str, checkpoint: str | None) -> float:
    """Seconds of one start call through the API (as the agent makes it: no CLI process)."""
    params = {"checkpoint": checkpoint} if checkpoint else {}
    t0 = time.time()
    res = engine.api._post(engine.api._url("/containers/{0}/start", ref), params=params)
    engine.api._raise_for_status(res)
    return time.time() - t0


def floor(lab: Lab, layers: tuple[str, ...], reps: int) -> dict[str, Any]:
    """Docker's own start path on b, through the API: a plain start (no checkpoint) of the
    workload image, and the start from a plain checkpoint of a small (4 MiB) workload, its
    dump with CRIU's network lock (the default) and without (migrate's dumps)."""
    import migrate.engines.docker.runc_conf as conf_mod

    b = lab.host("b")
    out: dict[str, list[float]] = {
        "plain": [],
        "checkpoint_small_lock": [],
        "checkpoint_small_nolock": [],
    }
    eb = DockerEngine(b.docker_host)
    for _ in range(reps):
        name = f"lzf-plain-{uuid.uuid4().hex[:6]}"
        docker(b, "create", "--name", name, IMAGE, "4", "0", "50")
        out["plain"].append(_api_start(eb, name, None))
        docker(b, "rm", "-f", name, check=False)
    real_dump_env = conf_mod.dump_env
    for key in ("checkpoint_small_lock", "checkpoint_small_nolock") * reps:
        conf_mod.dump_env = real_dump_env if key.endswith("nolock") else (lambda w: None)
        name = f"lzf-small-{uuid.uuid4().hex[:6]}"
        upper = start_workload(b, name, Case(4, 0, layers=layers))
        before = request_sum(b, name, upper, 0)
        eb.pause(name)
        tmp = Path(tempfile.mkdtemp(prefix="lzf-floor-", dir="/var/tmp"))
        try:
            eb.checkpoint(name, tmp / "img", tmp / "work")
            eb.kill(name)
            for _ in range(200):
                if not inspect(b, name)["State"]["Running"]:
                    break
                time.sleep(0.05)
            shutil.copytree(tmp / "img", eb.checkpoint_dir(name, "small"))
            # Shared, as migrate's own plain restores: another migration on this machine may
            # hold its lazy settings in the host's runc.conf for a moment.
            with conf_mod.criu_config_lock(exclusive=False):
                out[key].append(_api_start(eb, name, "small"))
            seq, digest = request_sum(b, name, upper_dir(b, name), before[0])
            if digest != before[1]:
                raise RuntimeError("small restore: memory hash mismatch")
        finally:
            conf_mod.dump_env = real_dump_env
            shutil.rmtree(tmp, ignore_errors=True)
            docker(b, "rm", "-f", name, check=False)
    return {**out, **{f"median_{k}": statistics.median(v) for k, v in out.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=os.environ.get("MIGRATE_BENCH_LAB", "mbench"))
    ap.add_argument("--subnet", default=os.environ.get("MIGRATE_BENCH_SUBNET", "10.213.20.0/24"))
    ap.add_argument("--mem", default="64,1024")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: print the summary of saved runs",
    )
    ap.add_argument(
        "--from-kept",
        type=Path,
        nargs=2,
        metavar=("KEPT_DIR", "BENCH_JSON"),
        help="measure nothing: the same segments for `migrate run` legs of "
        "bench_run.py --keep-criu-logs KEPT_DIR (its BENCH_JSON)",
    )
    ap.add_argument("--floor", action="store_true")
    ap.add_argument(
        "--variants",
        default="skip",
        help="comma-separated, alternated per repetition: skip (migrate's dumps "
        "now), lock (CRIU's default network lock, as before)",
    )
    ap.add_argument(
        "--criu-conf",
        default="",
        help="extra CRIU options for the dump (CRIU_CONFIG_FILE), e.g. 'network-lock skip'",
    )
    args = ap.parse_args(argv)
    import migrate.engines.docker.runc_conf as conf_mod

    real_dump_env = conf_mod.dump_env
    if args.summarize or args.from_kept:
        if args.from_kept:
            runs = from_kept(Lab(LabConfig(name=args.lab, subnet=args.subnet)), *args.from_kept)
            if args.json:
                args.json.write_text(json.dumps({"runs": runs}, indent=1))
        else:
            runs = [r for f in args.summarize for r in json.loads(f.read_text())["runs"]]
        for key, sm in summary(runs).items():
            print(f"== {key}: n={sm['n']} median downtime {sm['downtime']:.3f} {sm['downtimes']}")
            for label, x in sm["segments"].items():
                print(f"   {x:7.3f}  {label}")
            print(f"   {sum(sm['segments'].values()):7.3f}  (sum of the medians)")
        return 0
    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    layers = build_workload_image(lab.host("a"))
    build_workload_image(lab.host("b"))
    out: dict[str, Any] = {"runs": []}
    if args.floor:
        out["floor"] = floor(lab, layers, args.reps)
    else:
        conf = args.criu_conf.replace(";", "\n") + "\n" if args.criu_conf else ""
        for mem in [int(x) for x in args.mem.split(",")]:
            for _, variant in [(i, v) for i in range(args.reps) for v in args.variants.split(",")]:
                conf_mod.dump_env = real_dump_env if variant == "skip" else (lambda w: None)
                r = run_once(lab, layers, mem, args.keep, conf)
                r["variant"] = variant
                print(
                    f"{mem} MiB {variant}: downtime {r['downtime']:.3f} "
                    + " ".join(f"{k}={v:.3f}" for k, v in r["steps"].items()),
                    file=sys.stderr,
                    flush=True,
                )
                for x, label in timeline(r):
                    print(f"   {x:7.3f}  {label}", file=sys.stderr)
                out["runs"].append(r)
    if out["runs"]:
        out["summary"] = summary(out["runs"])
        for key, sm in out["summary"].items():
            print(
                f"== {key}: n={sm['n']} median downtime {sm['downtime']:.3f} {sm['downtimes']}",
                file=sys.stderr,
            )
            for label, x in sm["segments"].items():
                print(f"   {x:7.3f}  {label}", file=sys.stderr)
            print(f"   {sum(sm['segments'].values()):7.3f}  (sum of the medians)", file=sys.stderr)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
