"""`migrate run` against the manual procedure and the raw SSH link, on the sandbox lab.

    .venv/bin/python benchmarks/bench_run.py                      # 256 MiB, empty RW layer
    .venv/bin/python benchmarks/bench_run.py --mem 64,256,1024 --rw 0,100,1024 [--full]
    .venv/bin/python benchmarks/bench_run.py --legs migrate,raw   # skip the manual procedure

For each case (MEM MiB of process memory, RW MiB written to the read-write layer; both half
random bytes and half text, see memfill.c) it runs, on lab hosts a -> b, one after another:

  manual   what an operator does today with /usr/bin/docker (20.10) and OpenSSH, each step
           timed: docker pause, docker checkpoint create --leave-running, docker save | ssh
           docker load (the image is absent on b), ssh docker create, tar of the upper dir
           over ssh into the new container's upper dir, tar of the checkpoint into its
           checkpoints dir, ssh docker start --checkpoint. Downtime = pause to started.
           ssh runs over one ControlMaster connection opened beforehand (no handshake per
           step), so the manual numbers are the best an operator gets.
  migrate  `migrate run --json` of an identical container: downtime_s, total_s, phases, bytes,
           and the peak RSS (VmHWM) of the source process and of the agent on b.
  raw      OpenSSH `ssh b 'cat >/dev/null'` of as many random bytes as migrate moved raw,
           with the default cipher and with aes128-gcm.

Every migrated container is checked: the process hashes its memory on SIGUSR1, and the hash
on b must equal the one taken on a (the seed is random, so a restart from scratch cannot
match). A case whose check fails is reported as failed, never as a result.

Writes benchmarks/results/NAME.json and NAME.md (NAME: run-256mb for the default case,
matrix for several cases; --name overrides) and, with --plot, NAME.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migrate.engines.docker import containerd
from migrate.lab.config import LabConfig, migrate_executable
from migrate.lab.hosts import Lab, LabHost
from migrate.lab.images import BUSYBOX_TAG, build_image, ensure_busybox_image, remove_image

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCKER = "/usr/bin/docker"  # 20.10, the daemons' version (/usr/local/bin/docker is v28)
IMAGE = "migrate-bench/memfill:1"
MiB = 1 << 20
STEP_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 600.0
SAMPLE_EVERY_S = 0.05
GLOBAL_CRIU_CONFIG = Path("/etc/criu/runc.conf")
LEGS = ("manual", "migrate", "raw")  # also possible: "lazy" (migrate run --strategy lazy),
# "noprecopy" (migrate run --no-precopy), "diskstaging" (migrate run --staging disk)
ALL_LEGS = (*LEGS, "lazy", "noprecopy", "diskstaging")
# Phases of `migrate run` that stream the read-write layer and the checkpoint; the stream
# throughput is their raw bytes over these seconds. (The image phase is left out: for this
# small image it is mostly `docker load` on b, not streaming.)
DATA_PHASES = ("rootfs", "transfer")

# Goals: issue 3 (downtime <= 0.7x manual, wire <= 0.6x raw) and issue 8.
GOAL_DOWNTIME_VS_MANUAL_ISSUE3 = 0.7
GOAL_WIRE_VS_RAW = 0.6
GOAL_DOWNTIME_VS_MANUAL_ISSUE8 = 0.3
GOAL_PEAK_RSS_MB = 200.0
GOAL_LAZY_DOWNTIME_S = 0.5
GOAL_LAZY_FLATNESS = 0.2
GOAL_RW_1G_EXTRA = 0.1
GOAL_STREAM_VS_SSH = 0.8


# --- results -----------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    in_downtime: bool


@dataclass
class ManualResult:
    steps: list[Step]
    downtime_s: float
    downtime_without_image_s: float  # the same with the image copied before the pause
    total_s: float
    bytes: dict[str, int]  # image (docker save), rootfs (upper dir), checkpoint, raw (sum)
    verified: bool
    # reference: the checkpoint's bytes through zstd in this process (level -> wire/raw, MB/s)
    zstd: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class MigrateResult:
    report: dict[str, Any]
    wall_s: float  # the `migrate run` process, start to exit
    source_peak_rss_kb: int | None
    agent_peak_rss_kb: int | None
    verified: bool
    # per phase: wall seconds and CPU seconds of the source and the agent process
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class RawResult:
    bytes: int
    seconds: dict[str, float]  # cipher -> seconds


@dataclass
class Case:
    mem_mb: int
    rw_mb: int
    text_pct: int = 50  # share of text in memory and files; 0 = incompressible
    layers: tuple[str, ...] = ()  # the workload image's diff IDs (cleared from b per leg)
    legs: tuple[str, ...] = ALL_LEGS  # the legs that may run for this case
    manual: ManualResult | None = None
    migrate: MigrateResult | None = None  # the default strategy (cold)
    lazy: MigrateResult | None = None  # --strategy lazy (post-copy), when that leg runs
    # `migrate run --no-precopy` (the read-write layer copied whole in the freeze), when the
    # `noprecopy` leg runs: the pre-copy's effect in the same run
    noprecopy: MigrateResult | None = None
    # `diskstaging` leg: checkpoint images staged on disk instead of in memory, same run
    diskstaging: MigrateResult | None = None
    raw: RawResult | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        text = "" if self.text_pct == 50 else f", {self.text_pct} % text"
        return f"{self.mem_mb} MiB / RW {self.rw_mb} MiB{text}"


# --- helpers -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def compile_workload(out_dir: Path) -> bytes:
    exe = out_dir / "memfill"
    subprocess.run(
        ["gcc", "-O2", "-static", "-Wall", "-o", str(exe), str(HERE / "memfill.c")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return exe.read_bytes()


def build_workload_image(a: LabHost) -> tuple[str, ...]:
    """The workload image on host a; returns its layer diff IDs."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = compile_workload(Path(tmp))
    ensure_busybox_image(a.docker_host)
    return build_image(
        a.docker_host,
        IMAGE,
        files={"/usr/local/bin/memfill": binary},
        run=["chmod 755 /usr/local/bin/memfill"],
        extra=['ENTRYPOINT ["/usr/local/bin/memfill"]'],
    ).layers


def docker(h: LabHost, *args: str, timeout: float = STEP_TIMEOUT_S, check: bool = True) -> str:
    p = h.run([DOCKER, *args], timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} on {h.name}: {p.stderr.strip()[-800:]}")
    return p.stdout.strip()


def inspect(h: LabHost, name: str) -> dict[str, Any]:
    return json.loads(docker(h, "inspect", name))[0]  # type: ignore[no-any-return]


def upper_dir(h: LabHost, name: str) -> Path:
    return Path(inspect(h, name)["GraphDriver"]["Data"]["UpperDir"])


def tree_bytes(root: Path) -> int:
    total = 0
    for dp, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dp, f))
            total += st.st_size
    return total


def zstd_reference(root: Path, levels: Sequence[int] = (1, 3)) -> dict[str, dict[str, float]]:
    """What zstd (one thread) makes of the checkpoint images: the floor for wire/raw."""
    import zstandard

    out = {}
    for level in levels:
        raw = wire = 0
        t0 = time.perf_counter()
        for dp, _dirs, files in os.walk(root):
            for f in sorted(files):
                c = zstandard.ZstdCompressor(level=level).compressobj()
                with open(os.path.join(dp, f), "rb") as fh:
                    while chunk := fh.read(MiB):
                        raw += len(chunk)
                        wire += len(c.compress(chunk))
                wire += len(c.flush())
        dt = time.perf_counter() - t0
        out[str(level)] = {"wire_vs_raw": wire / raw if raw else 0.0, "mb_s": raw / dt / 1e6}
    return out


def clear_b(b: LabHost, name: str, layers: Sequence[str]) -> None:
    """Nothing of a previous leg on b: the container, and the image with every layer of it
    (other images of the sandbox lab that share the busybox base layer are removed too, or
    migrate would rightly skip that layer and send less than `docker save`)."""
    docker(b, "rm", "-f", name, check=False)
    remove_image(b.docker_host, IMAGE)
    remove_image(b.docker_host, BUSYBOX_TAG)
    for image_id in set(docker(b, "images", "-aq", check=False).split()):
        try:
            have = inspect(b, image_id)["RootFS"].get("Layers") or []
        except (RuntimeError, IndexError, KeyError):
            continue
        if set(have) & set(layers):
            docker(b, "rmi", "-f", image_id, check=False)
            if image_id in docker(b, "images", "-aq", check=False).split():
                log(
                    f"warning: image {image_id} on b shares layers with {IMAGE} and is in use "
                    "(a container?): migrate will rightly not send those layers"
                )
    if docker(b, "images", "-q", IMAGE, check=False):
        raise RuntimeError(f"{IMAGE} is still on b")


def _dump_mode_options() -> list[str]:
    """Options in /etc/criu/runc.conf that change how every dump on this host works."""
    try:
        text = GLOBAL_CRIU_CONFIG.read_text()
    except OSError:
        return []
    words = [ln.split()[0].lstrip("-") for ln in text.splitlines() if ln.split()]
    return [w for w in words if w in ("lazy-pages", "page-server")]


def wait_no_global_criu_config(timeout: float = 300.0) -> None:
    """runc hands /etc/criu/runc.conf to every CRIU it runs on this host: a `lazy-pages` line
    there (written for a moment by a lazy migration) turns every dump into a page server that
    waits forever. Measuring with it present would measure something else: wait it out.
    (Options such as `file-locks` are fine.)"""
    deadline = time.monotonic() + timeout
    while opts := _dump_mode_options():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{GLOBAL_CRIU_CONFIG} says {', '.join(opts)} (written by "
                "another migration?): every CRIU dump on this host would use it"
            )
        log(f"waiting: {GLOBAL_CRIU_CONFIG} says {', '.join(opts)} (another migration's?)")
        time.sleep(5)


def start_workload(a: LabHost, name: str, case: Case) -> Path:
    wait_no_global_criu_config()
    docker(
        a, "run", "-d", "--name", name, IMAGE, str(case.mem_mb), str(case.rw_mb), str(case.text_pct)
    )
    upper = upper_dir(a, name)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (upper / "tmp" / "ready").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S:.0f} s")
        st = inspect(a, name)["State"]
        if not st["Running"]:
            raise RuntimeError(f"{name} exited ({st['ExitCode']}) before it was ready")
        time.sleep(0.2)
    if SETTLE:
        # --settle: the layer as if written long ago (written back), not seconds before.
        from migrate.fs.precopy import flush

        flush(upper, 120)
    return upper


# --settle (main): write the workload's layer back to disk before each leg starts.
SETTLE = False
# --keep-criu-logs (main): what the agent command is prefixed with.
AGENT_ENV = ""


def read_sum(upper: Path) -> tuple[int, str]:
    seq, digest = (upper / "tmp" / "sum").read_text().split()
    return int(seq), digest


def request_sum(h: LabHost, name: str, upper: Path, after: int) -> tuple[int, str]:
    """Ask the process to hash its memory; wait for a sequence number above ``after``."""
    docker(h, "kill", "-s", "USR1", name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            seq, digest = read_sum(upper)
        except (FileNotFoundError, ValueError):
            seq, digest = -1, ""
        if seq > after:
            return seq, digest
        time.sleep(0.05)
    raise RuntimeError(f"{name} on {h.name} did not answer the checksum request")


def verify_on_b(b: LabHost, name: str, before: tuple[int, str]) -> bool:
    """The memory hash on b equals the one taken on a, and the counter continued."""
    st = inspect(b, name)["State"]
    if not st["Running"]:
        log(f"verify: {name} is not running on b ({st['Status']})")
        return False
    seq, digest = request_sum(b, name, upper_dir(b, name), before[0])
    ok = digest == before[1] and seq == before[0] + 1
    log(f"verify: a {before} -> b {(seq, digest)}: {'OK' if ok else 'MISMATCH'}")
    return ok


# --- peak RSS sampling ---------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    """utime + stime of one process (its own threads, not its children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _net_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class PeakSampler:
    """Samples VmHWM (the kernel's own peak RSS) of the source process and of every `migrate
    agent` process in b's network namespace, every SAMPLE_EVERY_S, until stopped. VmHWM only
    grows, so the last sample before a process exits is its peak up to that moment."""

    def __init__(self, source_pid: int, b: LabHost) -> None:
        self.source_pid = source_pid
        self.b_ns = f"net:[{os.stat(b.netns_path).st_ino}]"
        self.source_kb: int | None = None
        self.agent_kb: dict[int, int] = {}
        # (monotonic time, source CPU s, agents' CPU s): to tell which side is busy per phase
        self.cpu: list[tuple[float, float, float]] = []
        self._agent_cpu: dict[int, float] = {}
        self._source_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _agents(self) -> list[int]:
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or _net_ns(d) != self.b_ns:
                continue
            try:
                argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # the agent is python running the `migrate` script with the argument `agent`
            if b"agent" in argv and any(a.endswith(b"/migrate") for a in argv):
                found.append(int(d))
        return found

    def _run(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            kb = _status_kb(self.source_pid, "VmHWM")
            if kb is not None:
                self.source_kb = max(self.source_kb or 0, kb)
            now = time.monotonic()
            if now - last_scan > 0.25:
                for pid in self._agents():
                    self.agent_kb.setdefault(pid, 0)
                last_scan = now
            for pid in list(self.agent_kb):
                kb = _status_kb(pid, "VmHWM")
                if kb is not None:
                    self.agent_kb[pid] = max(self.agent_kb[pid], kb)
                c = _cpu_s(pid)
                if c is not None:
                    self._agent_cpu[pid] = c
            c = _cpu_s(self.source_pid)
            if c is not None:
                self._source_cpu = c
            self.cpu.append((now, self._source_cpu, sum(self._agent_cpu.values())))
            self._stop.wait(SAMPLE_EVERY_S)

    def cpu_per_phase(self, phases: dict[str, float], end: float) -> dict[str, dict[str, float]]:
        """CPU seconds of source and agent in each phase, placing the phases back to back so
        that the last one ends at ``end`` (when `migrate run` exited; accurate to ~0.1 s)."""
        out: dict[str, dict[str, float]] = {}
        t = end
        for name, dur in reversed(list(phases.items())):
            lo, hi = self._at(t - dur), self._at(t)
            out[name] = {"wall": dur, "source": hi[0] - lo[0], "agent": hi[1] - lo[1]}
            t -= dur
        return dict(reversed(list(out.items())))

    def _at(self, t: float) -> tuple[float, float]:
        before = [x for x in self.cpu if x[0] <= t]
        x = before[-1] if before else (self.cpu[0] if self.cpu else (0.0, 0.0, 0.0))
        return x[1], x[2]

    @property
    def agent_peak_kb(self) -> int | None:
        return max(self.agent_kb.values()) if self.agent_kb else None


# --- the legs ------------------------------------------------------------------------------


class SshMaster:
    """One OpenSSH ControlMaster connection from host a to host b, reused by every step."""

    def __init__(self, lab: Lab, a: LabHost, tmp: Path, extra: Sequence[str] = ()) -> None:
        self.lab, self.a = lab, a
        self.control = tmp / "cm"
        self.opts = ["-o", f"ControlPath={self.control}", "-o", "ControlMaster=auto", *extra]

    def argv(self, *cmd: str) -> list[str]:
        base = self.lab.ssh_argv("b", *cmd)
        return [base[0], *self.opts, *base[1:]]

    def shell(self, *cmd: str) -> str:
        return " ".join(shlex.quote(x) for x in self.argv(*cmd))

    def __enter__(self) -> SshMaster:
        base = self.lab.ssh_argv("b")
        argv = [base[0], *self.opts, "-o", "ControlPersist=600", "-MNf", *base[1:]]
        self.a.run(argv, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        base = self.lab.ssh_argv("b")
        self.a.run([base[0], *self.opts, "-O", "exit", *base[1:]], check=False, timeout=30)


def run_manual(lab: Lab, a: LabHost, b: LabHost, case: Case) -> ManualResult:
    name = f"bench-m-{uuid.uuid4().hex[:6]}"
    clear_b(b, name, case.layers)
    root_a = Path(docker(a, "info", "-f", "{{.DockerRootDir}}"))
    root_b = Path(docker(b, "info", "-f", "{{.DockerRootDir}}"))
    cp = "bench"
    state: dict[str, str] = {}
    try:
        upper_a = start_workload(a, name, case)
        before = request_sum(a, name, upper_a, 0)
        cfg = inspect(a, name)
        id_a = cfg["Id"]
        cp_a = root_a / "containers" / id_a / "checkpoints" / cp
        tar_x = "tar --xattrs --xattrs-include='*' --numeric-owner"
        steps: list[Step] = []
        with tempfile.TemporaryDirectory() as tmp, SshMaster(lab, a, Path(tmp)) as ssh:

            def sh(cmd: str) -> str:
                p = a.run(
                    ["bash", "-o", "pipefail", "-c", cmd], timeout=STEP_TIMEOUT_S, check=False
                )
                if p.returncode != 0:
                    raise RuntimeError(f"manual step failed: {cmd}\n{p.stderr.strip()[-800:]}")
                return p.stdout.strip()

            def create() -> None:
                args = [
                    DOCKER,
                    "create",
                    "--name",
                    name,
                    "--hostname",
                    cfg["Config"]["Hostname"],
                    cfg["Config"]["Image"],
                    *cfg["Args"],
                ]
                state["id_b"] = sh(ssh.shell(*args)).splitlines()[-1]
                state["upper_b"] = sh(
                    ssh.shell(DOCKER, "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", name)
                )

            def rootfs() -> None:
                remote = f"{tar_x} -xpf - -C {shlex.quote(state['upper_b'])}"
                sh(f"{tar_x} -C {shlex.quote(str(upper_a))} -cf - . | {ssh.shell(remote)}")

            def checkpoint_copy() -> None:
                d = shlex.quote(str(root_b / "containers" / state["id_b"] / "checkpoints" / cp))
                remote = f"mkdir -p {d} && tar -xf - -C {d}"
                sh(f"tar -C {shlex.quote(str(cp_a))} -cf - . | {ssh.shell(remote)}")

            plan: list[tuple[str, bool, Callable[[], object]]] = [
                ("docker pause", True, lambda: sh(f"{DOCKER} pause {name}")),
                (
                    "docker checkpoint create --leave-running",
                    True,
                    lambda: sh(f"{DOCKER} checkpoint create --leave-running {name} {cp}"),
                ),
                (
                    "docker save | ssh docker load",
                    True,
                    lambda: sh(f"{DOCKER} save {IMAGE} | {ssh.shell(DOCKER, 'load')}"),
                ),
                ("ssh docker create (+ inspect upper dir)", True, create),
                ("tar upper dir | ssh tar -x", True, rootfs),
                ("tar checkpoint | ssh tar -x into checkpoints/", True, checkpoint_copy),
                (
                    "ssh docker start --checkpoint",
                    True,
                    lambda: sh(ssh.shell(DOCKER, "start", "--checkpoint", cp, name)),
                ),
                ("docker rm -f (source)", False, lambda: sh(f"{DOCKER} rm -f {name}")),
            ]
            for label, in_downtime, fn in plan:
                if label.startswith("docker rm"):
                    # the checkpoint and upper dir vanish with the source: measure them first
                    sizes = {"checkpoint": tree_bytes(cp_a), "rootfs": tree_bytes(upper_a)}
                    # level 9 only where it stays cheap (~80 MB/s here)
                    levels = (1, 3, 9) if sizes["checkpoint"] <= 300 * MiB else (1, 3)
                    zref = zstd_reference(cp_a, levels)
                t0 = time.monotonic()
                fn()
                steps.append(Step(label, time.monotonic() - t0, in_downtime))
                log(f"manual: {label}: {steps[-1].seconds:.2f} s")
            # the steps ran back to back; the sizes and zstd reference above are not counted
            total = sum(s.seconds for s in steps)
        image_bytes = int(
            a.run(["bash", "-o", "pipefail", "-c", f"{DOCKER} save {IMAGE} | wc -c"]).stdout
        )
        sizes["image"] = image_bytes
        sizes["raw"] = sum(sizes.values())
        downtime = sum(s.seconds for s in steps if s.in_downtime)
        image_s = sum(s.seconds for s in steps if s.name.startswith("docker save"))
        ok = verify_on_b(b, name, before)
        return ManualResult(steps, downtime, downtime - image_s, total, sizes, ok, zref)
    finally:
        docker(a, "rm", "-f", name, check=False)
        if "id_b" in state:
            # containerd never deletes the copy of the images it unpacked for CRIU (the agent
            # cleans up after itself; an operator's `docker start --checkpoint` leaks it)
            cp_b = root_b / "containers" / state["id_b"] / "checkpoints" / cp
            for leftover in containerd.restore_copies(lab.config.paths("b").exec_root, cp_b):
                shutil.rmtree(leftover, ignore_errors=True)
        clear_b(b, name, case.layers)


def run_migrate(
    lab: Lab, a: LabHost, b: LabHost, case: Case, strategy: str = "", extra: Sequence[str] = ()
) -> MigrateResult:
    name = f"bench-r-{uuid.uuid4().hex[:6]}"
    clear_b(b, name, case.layers)
    env = lab.env()
    try:
        upper_a = start_workload(a, name, case)
        before = request_sum(a, name, upper_a, 0)
        argv = [
            str(migrate_executable()),
            "run",
            name,
            "--to",
            b.url,
            "--identity",
            env["MIGRATE_LAB_KEY"],
            "--known-hosts",
            env["MIGRATE_LAB_KNOWN_HOSTS"],
            "--agent-command",
            AGENT_ENV + env["MIGRATE_AGENT_COMMAND"],
            "--json",
        ]
        if strategy:
            argv += ["--strategy", strategy]
        argv += list(extra)
        t0 = time.monotonic()
        p = a.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with PeakSampler(p.pid, b) as sampler:
            out, err = p.communicate(timeout=STEP_TIMEOUT_S)
            t_end = time.monotonic()
        wall = t_end - t0
        if p.returncode != 0:
            raise RuntimeError(
                f"migrate run exited {p.returncode}: {err.strip()[-1500:]}\n{out[-1500:]}"
            )
        report = json.loads(out)
        log(
            f"migrate {strategy or 'cold'} {' '.join(extra)}: downtime {report['downtime_s']:.2f} s, total {report['total_s']:.2f} s, "
            f"phases {report['phases']}"
        )
        ok = verify_on_b(b, name, before)
        cpu = sampler.cpu_per_phase(report["phases"], t_end)
        return MigrateResult(report, wall, sampler.source_kb, sampler.agent_peak_kb, ok, cpu)
    finally:
        docker(a, "rm", "-f", name, check=False)
        clear_b(b, name, case.layers)


RAW_CIPHERS: dict[str, list[str]] = {
    "default": [],
    "aes128-gcm@openssh.com": ["-c", "aes128-gcm@openssh.com"],
}


def run_raw(lab: Lab, a: LabHost, nbytes: int) -> RawResult:
    """OpenSSH `ssh b 'cat >/dev/null'` of ``nbytes`` random bytes read from tmpfs, over a
    ControlMaster connection opened beforehand (the handshake is not timed: migrate's data
    phases do not include its connection set-up either)."""
    path = Path("/dev/shm") / f"migrate-bench-{uuid.uuid4().hex[:8]}"
    try:
        block = os.urandom(8 * MiB)
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        seconds = {}
        for cipher, opts in RAW_CIPHERS.items():
            with (
                tempfile.TemporaryDirectory() as tmp,
                SshMaster(lab, a, Path(tmp), opts) as ssh,
                open(path, "rb") as f,
            ):
                t0 = time.monotonic()
                subprocess.run(
                    a.argv(ssh.argv("cat >/dev/null")),
                    stdin=f,
                    check=True,
                    timeout=STEP_TIMEOUT_S,
                    capture_output=True,
                )
                seconds[cipher] = time.monotonic() - t0
            log(f"raw ssh ({cipher}): {nbytes / MiB:.0f} MiB in {seconds[cipher]:.2f} s")
        return RawResult(nbytes, seconds)
    finally:
        path.unlink(missing_ok=True)


# --- one case, the matrix --------------------------------------------------------------------


def run_case(lab: Lab, case: Case, legs: Sequence[str]) -> None:
    a, b = lab.host("a"), lab.host("b")
    log(f"case: {case.label}")
    legs = [x for x in legs if x in case.legs]
    if "manual" in legs:
        try:
            case.manual = run_manual(lab, a, b, case)
        except Exception as e:  # noqa: BLE001 - a failed leg is reported, the rest still runs
            case.errors.append(f"manual: {e}")
            log(f"manual FAILED: {e}")
    if "migrate" in legs:
        try:
            case.migrate = run_migrate(lab, a, b, case)
        except Exception as e:  # noqa: BLE001
            case.errors.append(f"migrate: {e}")
            log(f"migrate FAILED: {e}")
    if "noprecopy" in legs:
        try:
            case.noprecopy = run_migrate(lab, a, b, case, extra=["--no-precopy"])
        except Exception as e:  # noqa: BLE001
            case.errors.append(f"noprecopy: {e}")
            log(f"noprecopy FAILED: {e}")
    if "diskstaging" in legs:
        try:
            case.diskstaging = run_migrate(lab, a, b, case, extra=["--staging", "disk"])
        except Exception as e:  # noqa: BLE001
            case.errors.append(f"diskstaging: {e}")
            log(f"diskstaging FAILED: {e}")
    if "lazy" in legs:
        try:
            case.lazy = run_migrate(lab, a, b, case, "lazy")
        except Exception as e:  # noqa: BLE001
            case.errors.append(f"lazy: {e}")
            log(f"lazy FAILED: {e}")
    if "raw" in legs:
        nbytes = 0
        if case.migrate is not None:
            nbytes = int(case.migrate.core.report["bytes"]["raw"])
        elif case.manual is not None:
            nbytes = case.manual.bytes["raw"]
        if nbytes:
            try:
                case.raw = run_raw(lab, a, nbytes)
            except Exception as e:  # noqa: BLE001
                case.errors.append(f"raw: {e}")
                log(f"raw FAILED: {e}")


def case_list(
    mems: list[int], rws: list[int], full: bool, text_pct: int = 50, incompressible: bool = False
) -> list[Case]:
    """Every memory size with the smallest RW layer, and every RW layer with the middle memory
    size (--full: every combination); --incompressible adds the middle memory size with no text
    (migrate and raw only: the stream-throughput goal)."""
    mid = sorted(mems)[len(mems) // 2]
    if full:
        pairs = [(m, r) for m in mems for r in rws]
    else:
        pairs = [(m, min(rws)) for m in mems] + [(mid, r) for r in rws if r != min(rws)]
    cases = [Case(m, r, text_pct) for m, r in dict.fromkeys(pairs)]
    if incompressible:
        cases.append(Case(mid, min(rws), 0, legs=("migrate", "lazy", "raw")))
    return cases


# --- report ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def data_seconds(report: dict[str, Any]) -> float:
    return float(sum(v for k, v in report["phases"].items() if k in DATA_PHASES))


def derived(case: Case) -> dict[str, Any]:
    """The numbers the goals are about, for one case."""
    d: dict[str, Any] = {}
    m, man, raw, lazy = case.migrate, case.manual, case.raw, case.lazy
    if m is not None:
        rb = m.report["bytes"]
        d["migrate_downtime_s"] = m.report["downtime_s"]
        d["migrate_total_s"] = m.report["total_s"]
        d["wire_vs_raw"] = ratio(rb["wire"], rb["raw"])
        kb = [k for k in (m.source_peak_rss_kb, m.agent_peak_rss_kb) if k is not None]
        d["source_peak_rss_mib"] = (
            None if m.source_peak_rss_kb is None else m.source_peak_rss_kb / 1024
        )
        d["agent_peak_rss_mib"] = (
            None if m.agent_peak_rss_kb is None else m.agent_peak_rss_kb / 1024
        )
        d["peak_rss_MB"] = max(kb) * 1024 / 1e6 if kb else None  # MB (10^6), as the goal says
        moving = data_seconds(m.report)
        d["migrate_data_phases_s"] = moving
        # raw bytes over the seconds spent in the phases that move data: what the user gets
        streamed = rb["rootfs"] + rb["checkpoint"]
        d["migrate_effective_mb_s"] = streamed / moving / 1e6 if moving else None
    if lazy is not None:
        d["lazy_downtime_s"] = lazy.report["downtime_s"]
        d["lazy_total_s"] = lazy.report["total_s"]
    if man is not None:
        d["manual_downtime_s"] = man.downtime_s
        d["manual_downtime_without_image_s"] = man.downtime_without_image_s
        d["manual_total_s"] = man.total_s
    if m is not None and man is not None:
        d["downtime_vs_manual"] = ratio(m.report["downtime_s"], man.downtime_s)
        d["downtime_vs_manual_without_image"] = ratio(
            m.report["downtime_s"], man.downtime_without_image_s
        )
        d["total_vs_manual"] = ratio(m.report["total_s"], man.total_s)
    if raw is not None:
        best = min(raw.seconds.values())
        d["raw_ssh_best_s"] = best
        d["raw_ssh_mb_s"] = raw.bytes / best / 1e6
        if d.get("migrate_effective_mb_s"):
            d["stream_vs_ssh"] = d["migrate_effective_mb_s"] / d["raw_ssh_mb_s"]
    return d


def fmt(x: Any, spec: str = ".2f", unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return f"{x:{spec}}{unit}"


def verdict(value: float | None, limit: float, at_least: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value >= limit if at_least else value <= limit
    return f"{'MET' if met else 'NOT MET'} ({value:.2f}, goal {'>=' if at_least else '<='} {limit})"


def find(cases: list[Case], mem: int, rw: int, text: int = 50) -> Case | None:
    return next((c for c in cases if (c.mem_mb, c.rw_mb, c.text_pct) == (mem, rw, text)), None)


def goals(cases: list[Case]) -> list[str]:
    """Issue 3's and issue 8's goals, each with the cases it was judged on."""
    out = []
    c256 = find(cases, 256, 0)
    d256 = derived(c256) if c256 else {}
    out.append(
        "- Issue 3, cold downtime at 256 MiB <= 0.7x manual: "
        f"{verdict(d256.get('downtime_vs_manual'), GOAL_DOWNTIME_VS_MANUAL_ISSUE3)}."
    )
    wires = [(c, derived(c).get("wire_vs_raw")) for c in cases if c.text_pct == 50]
    out.append(
        "- Issue 3, wire <= 0.6x raw (half-text workload): "
        f"{verdict(d256.get('wire_vs_raw'), GOAL_WIRE_VS_RAW)} at 256 MiB; all cases: "
        + ", ".join(f"{c.label} {fmt(w)}" for c, w in wires)
        + ". The zstd floor of this workload is under each case below (level 1, 3, 9)."
    )
    for mem in (256, 1024):
        c = find(cases, mem, 0)
        if c is not None:
            out.append(
                f"- Issue 8 goal 1, cold downtime at {mem} MiB <= 0.3x manual: "
                f"{verdict(derived(c).get('downtime_vs_manual'), GOAL_DOWNTIME_VS_MANUAL_ISSUE8)}."
            )
    zero = min((c.rw_mb for c in cases), default=0)
    lazy: list[tuple[int, float]] = [
        (c.mem_mb, float(c.lazy.report["downtime_s"]))
        for c in cases
        if c.rw_mb == zero
        and c.text_pct == 50
        and c.lazy is not None
        and c.lazy.report.get("downtime_s") is not None
    ]
    if lazy:
        big = max(lazy)
        lo, hi = min(v for _, v in lazy), max(v for _, v in lazy)
        out.append(
            f"- Issue 8 goal 2, lazy downtime at {big[0]} MiB: "
            f"{verdict(big[1], GOAL_LAZY_DOWNTIME_S)} s; flat across "
            f"{', '.join(str(m) for m, _ in lazy)} MiB: "
            f"{verdict(hi / lo - 1 if lo else None, GOAL_LAZY_FLATNESS)} (max/min - 1)."
        )
    else:
        out.append(
            "- Issue 8 goal 2 (lazy downtime): not measured (run with --legs ...,lazy "
            "once `migrate run --strategy lazy` exists)."
        )
    by_rw = [c for c in cases if c.text_pct == 50 and c.migrate is not None]
    empty = [c for c in by_rw if c.rw_mb == zero]
    big_rw = [c for c in by_rw if c.rw_mb >= 1024]
    pairs = [(e, g) for g in big_rw for e in empty if e.mem_mb == g.mem_mb]
    for e, g in pairs:
        assert e.migrate is not None and g.migrate is not None
        extra = g.migrate.core.report["downtime_s"] / e.migrate.core.report["downtime_s"] - 1
        out.append(
            f"- Issue 8 goal 3, {g.mem_mb} MiB with a {g.rw_mb} MiB unchanged RW layer "
            f"vs an empty one: {verdict(extra, GOAL_RW_1G_EXTRA)} extra downtime."
        )
        if e.noprecopy is not None and g.noprecopy is not None:
            before = g.noprecopy.report["downtime_s"] / e.noprecopy.report["downtime_s"] - 1
            gb = g.migrate.core.report["bytes"]
            out.append(
                f"  - the same without the pre-copy (`--no-precopy`, this run): "
                f"{before:.2f} extra downtime; with it, "
                f"{gb.get('rootfs_precopy', 0) / MiB:.0f} MiB went while the container ran and "
                f"{gb.get('rootfs', 0) / MiB:.1f} MiB in the freeze "
                f"({gb.get('rootfs_kept', 0) / MiB:.0f} MiB of unchanged files not sent again)."
            )
    if not pairs:
        out.append("- Issue 8 goal 3 (1 GiB RW layer): not measured in this run.")
    for c in cases:
        if c.migrate is None or c.diskstaging is None:
            continue
        ph_m, ph_d = c.migrate.core.report["phases"], c.diskstaging.report["phases"]
        out.append(
            f"- Staging, {c.label}: downtime {c.migrate.core.report['downtime_s']:.2f} s with the "
            f"images staged as {c.migrate.core.report.get('staging')} vs "
            f"{c.diskstaging.report['downtime_s']:.2f} s on disk (`--staging disk`); "
            f"checkpoint {ph_m.get('checkpoint', 0):.2f} vs {ph_d.get('checkpoint', 0):.2f} s, "
            f"transfer {ph_m.get('transfer', 0):.2f} vs {ph_d.get('transfer', 0):.2f} s, "
            f"restore {ph_m.get('restore', 0):.2f} vs {ph_d.get('restore', 0):.2f} s."
        )
    for c in cases:
        d = derived(c)
        if "stream_vs_ssh" not in d:
            continue
        kind = "incompressible" if c.text_pct == 0 else f"{c.text_pct} % text"
        goal = GOAL_STREAM_VS_SSH if c.text_pct == 0 else 1.0
        out.append(
            f"- Issue 8 goal 4, {c.label} ({kind}): RW layer + checkpoint raw bytes "
            f"over the {'+'.join(DATA_PHASES)} phases "
            f"{d['migrate_effective_mb_s']:.0f} MB/s vs OpenSSH "
            f"{d['raw_ssh_mb_s']:.0f} MB/s: "
            f"{verdict(d['stream_vs_ssh'], goal, at_least=True)}."
        )
    peaks: list[tuple[Case, float]] = [
        (c, float(derived(c)["peak_rss_MB"]))
        for c in cases
        if derived(c).get("peak_rss_MB") is not None
    ]
    if peaks:
        c, v = max(peaks, key=lambda x: x[1])
        out.append(
            f"- Issue 8 goal 5, peak RSS of source and agent (largest, at {c.label}): "
            f"{verdict(v, GOAL_PEAK_RSS_MB)} MB."
        )
    return out


def markdown(cases: list[Case], meta: dict[str, Any]) -> str:
    argv = f" {meta['argv']}" if meta["argv"] else ""
    out = [f"# `migrate run` vs the manual procedure vs the raw link ({meta['title']})", ""]
    out.append(
        f"Generated by `benchmarks/bench_run.py{argv}` on {meta['date']} in {meta['seconds']:.0f} s "
        f"({meta['host']}, {meta['cpus']} CPUs, kernel {meta['kernel']}), lab `{meta['lab']}`, "
        f"migrate at commit {meta['git']}. One run per case; this VM is shared, expect +-20 %."
    )
    out += [
        "",
        "Workload: a static C process (benchmarks/memfill.c) holding MEM MiB, half "
        "random bytes, half log-like text (unless the case says otherwise); its read-write "
        "layer holds RW MiB of files of the same mix. Memory verified after each migration: "
        "the process hashes its memory on SIGUSR1 and the hash on b must equal the one on a "
        "(random seed, so a fresh start cannot match).",
        "",
    ]
    out += [
        "## Summary",
        "",
        "| case | manual downtime | (image pre-copied) | migrate downtime | ratio | "
        "lazy downtime | manual total | migrate total | raw MiB | wire MiB | wire/raw | "
        "raw ssh (best) | migrate data phases | source peak RSS | agent peak RSS | verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        d = derived(c)
        rb = c.migrate.core.report["bytes"] if c.migrate else {}
        ver = [
            f"{leg} {fmt(r.verified)}"
            for leg, r in (("manual", c.manual), ("migrate", c.migrate), ("lazy", c.lazy))
            if r is not None
        ]
        out.append(
            f"| {c.label} | {fmt(d.get('manual_downtime_s'), '.2f', ' s')} "
            f"| {fmt(d.get('manual_downtime_without_image_s'), '.2f', ' s')} "
            f"| {fmt(d.get('migrate_downtime_s'), '.2f', ' s')} "
            f"| {fmt(d.get('downtime_vs_manual'), '.2f', 'x')} "
            f"| {fmt(d.get('lazy_downtime_s'), '.2f', ' s')} "
            f"| {fmt(d.get('manual_total_s'), '.2f', ' s')} "
            f"| {fmt(d.get('migrate_total_s'), '.2f', ' s')} "
            f"| {fmt(rb['raw'] / MiB if rb else None, '.0f')} "
            f"| {fmt(rb['wire'] / MiB if rb else None, '.0f')} "
            f"| {fmt(d.get('wire_vs_raw'), '.2f')} "
            f"| {fmt(d.get('raw_ssh_best_s'), '.2f', ' s')} "
            f"| {fmt(d.get('migrate_data_phases_s'), '.2f', ' s')} "
            f"| {fmt(d.get('source_peak_rss_mib'), '.0f', ' MiB')} "
            f"| {fmt(d.get('agent_peak_rss_mib'), '.0f', ' MiB')} | {', '.join(ver) or '-'} |"
        )
    out += [
        "",
        "ratio = migrate downtime / manual downtime. Downtime: manual = `docker pause` to "
        "`docker start --checkpoint` done on b (all steps below marked *); migrate = its "
        'report\'s `downtime_s` (pause to the destination running). "image pre-copied": '
        "the manual downtime without the `docker save | load` step, i.e. if the operator "
        "had copied the image before pausing. raw ssh: OpenSSH `ssh b 'cat >/dev/null'` of "
        "migrate's raw byte count (best of default cipher and aes128-gcm), over a "
        "connection opened beforehand (handshake not timed). migrate data phases: the sum "
        f"of its phases {', '.join(DATA_PHASES)} (streaming the RW layer and the "
        "checkpoint, decompression and writing on b included). Peak RSS: VmHWM of the "
        "`migrate run` process and of the `migrate agent` process on b, sampled every "
        "50 ms.",
        "",
    ]
    out += ["## Goals", "", *goals(cases), ""]
    out += ["## Where the time goes", ""]
    for c in cases:
        out += [f"### {c.label}", ""]
        if c.manual:
            out += ["Manual procedure (* = inside the downtime):", "", "| step | s |", "|---|---:|"]
            for s in c.manual.steps:
                out.append(f"| {s.name}{' *' if s.in_downtime else ''} | {s.seconds:.2f} |")
            mb = c.manual.bytes
            out += [
                f"| **downtime** | **{c.manual.downtime_s:.2f}** |",
                f"| total | {c.manual.total_s:.2f} |",
                "",
                f"Bytes over ssh (uncompressed): image {mb['image'] / MiB:.1f} MiB, "
                f"upper dir {mb['rootfs'] / MiB:.1f} MiB, checkpoint "
                f"{mb['checkpoint'] / MiB:.1f} MiB. Reference, the same checkpoint "
                "through zstd in one thread: "
                + ", ".join(
                    f"level {k}: wire/raw {v['wire_vs_raw']:.3f} at {v['mb_s']:.0f} MB/s"
                    for k, v in c.manual.zstd.items()
                )
                + ".",
                "",
            ]
        for title, r in (
            ("`migrate run`", c.migrate),
            ("`migrate run --staging disk`", c.diskstaging),
            ("`migrate run --strategy lazy`", c.lazy),
        ):
            if r is None:
                continue
            out += [
                f"{title} phases (in the order they ran; * = inside the downtime, "
                "from `freeze` through `restore`; CPU: seconds of CPU the `migrate run` "
                "process and the agent used in that phase, sampled every 50 ms):",
                "",
                "| phase | s | source CPU s | agent CPU s |",
                "|---|---:|---:|---:|",
            ]
            inside = False
            for k, v in r.report["phases"].items():
                inside = inside or k == "freeze"
                cpu = r.cpu.get(k, {})
                out.append(
                    f"| {k}{' *' if inside else ''} | {v:.2f} "
                    f"| {fmt(cpu.get('source'))} | {fmt(cpu.get('agent'))} |"
                )
                if k == "restore":
                    inside = False
            rb = r.report["bytes"]
            out += [
                f"| **downtime** | **{r.report['downtime_s']:.2f}** | | |",
                f"| total (report) | {r.report['total_s']:.2f} | | |",
                f"| `migrate run` process wall time | {r.wall_s:.2f} | | |",
                "",
                "Bytes: " + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in rb.items()),
                "",
            ]
            extra = {k: v for k, v in r.report.items() if k not in REPORT_KNOWN}
            if extra:
                out += ["Other report fields: `" + json.dumps(extra)[:600] + "`", ""]
        if c.raw:
            out += [
                "Raw link: "
                + ", ".join(
                    f"{k} {v:.2f} s ({c.raw.bytes / v / 1e6:.0f} MB/s)"
                    for k, v in c.raw.seconds.items()
                )
                + f" for {c.raw.bytes / MiB:.0f} MiB.",
                "",
            ]
        for e in c.errors:
            out += [f"**FAILED** {e}", ""]
    return "\n".join(out)


REPORT_KNOWN = {
    "status",
    "container",
    "source",
    "destination",
    "dest_name",
    "dest_container_id",
    "strategy",
    "downtime_s",
    "total_s",
    "phases",
    "bytes",
    "source_action",
    "error",
}


def load_cases(doc: dict[str, Any]) -> list[Case]:
    """The cases of a saved NAME.json, as the dataclasses they were written from."""

    def mig(d: dict[str, Any] | None) -> MigrateResult | None:
        return None if d is None else MigrateResult(**d)

    cases = []
    for d in doc["cases"]:
        man = d["manual"]
        cases.append(
            Case(
                mem_mb=d["mem_mb"],
                rw_mb=d["rw_mb"],
                text_pct=d["text_pct"],
                legs=tuple(d["legs"]),
                layers=tuple(d.get("layers", ())),
                manual=None
                if man is None
                else ManualResult(**(man | {"steps": [Step(**x) for x in man["steps"]]})),
                migrate=mig(d["migrate"]),
                lazy=mig(d["lazy"]),
                noprecopy=mig(d.get("noprecopy")),
                diskstaging=mig(d.get("diskstaging")),
                raw=None if d["raw"] is None else RawResult(**d["raw"]),
                errors=list(d["errors"]),
            )
        )
    return cases


def write_results(name: str, cases: list[Case], meta: dict[str, Any], plot_png: bool) -> None:
    RESULTS.mkdir(exist_ok=True)
    doc = {"meta": meta, "cases": [asdict(c) | {"derived": derived(c)} for c in cases]}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(cases, meta) + "\n")
    log(f"wrote {RESULTS / name}.json and .md")
    if plot_png:
        from plot import plot  # benchmarks/plot.py: needs the `bench` extra (matplotlib)

        plot(doc, RESULTS / f"{name}.png")
        log(f"wrote {RESULTS / name}.png")


def git_describe() -> str:
    p = subprocess.run(
        ["git", "-C", str(HERE), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
        check=False,
    )
    return p.stdout.strip() if p.returncode == 0 else "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--lab", default=os.environ.get("MIGRATE_BENCH_LAB", "mbench"))
    ap.add_argument("--subnet", default=os.environ.get("MIGRATE_BENCH_SUBNET", "10.213.20.0/24"))
    ap.add_argument("--mem", default="256", help="memory sizes in MiB, comma-separated")
    ap.add_argument("--rw", default="0", help="read-write layer sizes in MiB, comma-separated")
    ap.add_argument("--full", action="store_true", help="every (mem, rw) pair, not the two axes")
    ap.add_argument(
        "--legs",
        default=",".join(LEGS),
        help="manual,migrate,raw (and lazy: migrate run --strategy lazy)",
    )
    ap.add_argument("--text", type=int, default=50, help="percent of text in memory and files")
    ap.add_argument(
        "--incompressible",
        action="store_true",
        help="add the middle memory size with no text (stream throughput goal)",
    )
    ap.add_argument(
        "--settle",
        action="store_true",
        help="syncfs after the workload wrote its read-write layer, before each "
        "leg (a layer written long ago rather than seconds before)",
    )
    ap.add_argument(
        "--keep-criu-logs",
        type=Path,
        metavar="DIR",
        help="keep CRIU's logs of every migration in DIR (MIGRATE_KEEP_CRIU_LOGS, "
        "source and agent); benchmarks/lazy_floor.py --from-kept DIR reads them",
    )
    ap.add_argument("--name", help="output name under benchmarks/results/")
    ap.add_argument("--plot", action="store_true", help="also write NAME.png (matplotlib)")
    ap.add_argument(
        "--render",
        type=Path,
        metavar="NAME.json",
        help="measure nothing: rewrite NAME.md (and .png) from a saved NAME.json",
    )
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        write_results(args.render.stem, load_cases(saved), saved["meta"], args.plot)
        return 0
    mems = [int(x) for x in args.mem.split(",")]
    rws = [int(x) for x in args.rw.split(",")]
    legs = [x.strip() for x in args.legs.split(",")]
    global SETTLE, AGENT_ENV
    SETTLE = args.settle
    if args.keep_criu_logs:
        from migrate.checkpoint.criu import ENV_KEEP_LOGS

        os.environ[ENV_KEEP_LOGS] = str(args.keep_criu_logs.resolve())  # the source inherits it
        AGENT_ENV = f"env {ENV_KEEP_LOGS}={shlex.quote(os.environ[ENV_KEEP_LOGS])} "
    cases = case_list(mems, rws, args.full, args.text, args.incompressible)
    single = [(c.mem_mb, c.rw_mb, c.text_pct) for c in cases] == [(256, 0, 50)]
    name = args.name or ("run-256mb" if single else "matrix")

    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    layers = build_workload_image(lab.host("a"))
    t0 = time.monotonic()
    for c in cases:
        c.layers = layers
        run_case(lab, c, legs)
    meta = {
        "title": "; ".join(c.label for c in cases),
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "lab": args.lab,
        "git": git_describe(),
        "seconds": round(time.monotonic() - t0, 1),
    }
    write_results(name, cases, meta, args.plot)
    print((RESULTS / f"{name}.md").read_text())
    failed = any(c.errors for c in cases) or any(
        r is not None and not r.verified for c in cases for r in (c.manual, c.migrate, c.lazy)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
