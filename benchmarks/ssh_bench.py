"""SSH exec-channel throughput on a loopback sshd: paramiko tuned vs defaults vs OpenSSH.

Run as root (it starts its own sshd on 127.0.0.1, stopped by PID at the end):

    .venv/bin/python benchmarks/ssh_bench.py [--size-mib 1024] [--repeat 3] [--out FILE]

Sends SIZE of random bytes to ``cat >/dev/null`` (source -> agent, the direction that carries a
migration) and reads SIZE from ``head -c SIZE /dev/zero`` (agent -> source), and writes a
markdown table (median of the repeats) to benchmarks/results/ssh.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
from paramiko.common import DEFAULT_MAX_PACKET_SIZE, DEFAULT_WINDOW_SIZE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

# After the path set-up above: run as a script, the checkout and the unit tests' sshd helper
# are not importable before it.
from sshd_helper import running_sshd, sshd_available  # noqa: E402

from migrate.transport.destination import SshOptions, parse_destination  # noqa: E402
from migrate.transport.ssh import connect  # noqa: E402

CHUNK = 1 << 20
NOTES_MARKER = "<!-- notes: kept by ssh_bench.py -->"
OPENSSH_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Case:
    name: str
    opts: SshOptions | None  # None: OpenSSH client
    naive_sendall: bool = False  # paramiko's Channel.sendall / recv, 1 MiB at a time
    openssh_cipher: str | None = None


@dataclass(frozen=True)
class Result:
    case: str
    direction: str
    seconds: list[float]
    cpu: list[float]
    cipher: str
    failures: list[str]

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def mbps(self, size: int) -> str:
        return "-" if self.median is None else f"{size / self.median / 1e6:.0f}"


def paramiko_defaults(base: SshOptions) -> SshOptions:
    return replace(
        base,
        window_size=DEFAULT_WINDOW_SIZE,
        max_packet_size=DEFAULT_MAX_PACKET_SIZE,
        ciphers=None,
        macs=None,
        rekey_bytes=None,
    )


def cases(base: SshOptions) -> list[Case]:
    d = paramiko_defaults(base)
    gcm = replace(d, ciphers=("aes128-gcm@openssh.com",))
    etm = replace(d, macs=("hmac-sha2-256-etm@openssh.com",))
    window = replace(gcm, window_size=base.window_size, max_packet_size=base.max_packet_size)
    return [
        Case(
            "paramiko defaults (aes128-ctr+hmac-sha2-256, 2 MiB window, Channel.sendall/recv)",
            d,
            naive_sendall=True,
        ),
        Case("defaults + SshChannel (chunked sendall, whole-buffer recv)", d),
        Case("+ aes128-ctr + hmac-sha2-256-etm", etm),
        Case("+ aes128-gcm", gcm),
        Case("+ aes128-gcm + 16 MiB window, 256 KiB packets", window),
        Case("tuned (migrate's SshOptions defaults: + rekey every 64 GiB)", base),
        Case("OpenSSH ssh, default cipher", None),
        Case(
            "OpenSSH ssh -c aes128-gcm@openssh.com", None, openssh_cipher="aes128-gcm@openssh.com"
        ),
        Case("OpenSSH ssh -c aes128-ctr", None, openssh_cipher="aes128-ctr"),
    ]


def _timed(fn: Callable[[], str]) -> tuple[float, float, str]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    cipher = fn()
    return time.perf_counter() - t0, time.process_time() - c0, cipher


def paramiko_send(case: Case, url: str, size: int, buf: bytes) -> tuple[float, float, str]:
    assert case.opts is not None
    session = connect(parse_destination(url), case.opts)
    try:
        ch = session.exec("cat >/dev/null")
        ch.settimeout(60)

        def run() -> str:
            if case.naive_sendall:
                for _ in range(size // CHUNK):
                    ch.chan.sendall(buf)
            else:
                for _ in range(size // CHUNK):
                    ch.sendall(buf)
            ch.shutdown_write()
            rc = ch.exit_status(60)
            if rc != 0:
                raise RuntimeError(f"remote cat exited with {rc}: {ch.stderr_tail()}")
            return str(session.transport.local_cipher)

        return _timed(run)
    finally:
        session.close()


def paramiko_recv(case: Case, url: str, size: int) -> tuple[float, float, str]:
    assert case.opts is not None
    session = connect(parse_destination(url), case.opts)
    try:
        ch = session.exec(f"head -c {size} /dev/zero")
        ch.settimeout(60)

        def run() -> str:
            got = 0
            recv = ch.chan.recv if case.naive_sendall else ch.recv
            while True:
                data = recv(CHUNK)
                if not data:
                    break
                got += len(data)
            if got != size:
                raise RuntimeError(f"received {got} of {size} bytes")
            return str(session.transport.remote_cipher)

        return _timed(run)
    finally:
        session.close()


def openssh_argv(srv: object, case: Case) -> list[str]:
    extra = ["-c", case.openssh_cipher] if case.openssh_cipher else []
    return srv.ssh_argv(*extra)  # type: ignore[attr-defined, no-any-return]


def openssh_send(case: Case, srv: object, size: int, buf: bytes) -> tuple[float, float, str]:
    def run() -> str:
        proc = subprocess.Popen([*openssh_argv(srv, case), "cat >/dev/null"], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        for _ in range(size // CHUNK):
            proc.stdin.write(buf)
        proc.stdin.close()
        if proc.wait(OPENSSH_TIMEOUT_S) != 0:
            raise RuntimeError(f"ssh exited with {proc.returncode}")
        return case.openssh_cipher or "default"

    return _timed_children(run)


def openssh_recv(case: Case, srv: object, size: int) -> tuple[float, float, str]:
    def run() -> str:
        proc = subprocess.Popen(
            [*openssh_argv(srv, case), f"head -c {size} /dev/zero"], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        got = 0
        while chunk := proc.stdout.read(CHUNK):
            got += len(chunk)
        if proc.wait(OPENSSH_TIMEOUT_S) != 0 or got != size:
            raise RuntimeError(f"ssh exited with {proc.returncode} after {got} bytes")
        return case.openssh_cipher or "default"

    return _timed_children(run)


def _timed_children(fn: Callable[[], str]) -> tuple[float, float, str]:
    # The ssh client's CPU is a child's: count it, not the feeding Python loop.
    before = os.times()
    t0 = time.perf_counter()
    cipher = fn()
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, cipher


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssh.md")
    ap.add_argument("--only", default="", help="substring of the case names to run")
    args = ap.parse_args()
    why = sshd_available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    size = args.size_mib * CHUNK
    buf = os.urandom(CHUNK)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as d, running_sshd(Path(d)) as srv:
        base = SshOptions(identity=srv.client_key, known_hosts=srv.known_hosts)
        for case in cases(base):
            if args.only and args.only not in case.name:
                continue
            for direction in ("send", "recv"):
                secs, cpus, cipher, failures = [], [], "", []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    try:
                        if case.opts is None and direction == "send":
                            wall, cpu, cipher = openssh_send(case, srv, size, buf)
                        elif case.opts is None:
                            wall, cpu, cipher = openssh_recv(case, srv, size)
                        elif direction == "send":
                            wall, cpu, cipher = paramiko_send(case, srv.url, size, buf)
                        else:
                            wall, cpu, cipher = paramiko_recv(case, srv.url, size)
                    except Exception as e:  # noqa: BLE001 - a failed run is a result too
                        failures.append(
                            f"{type(e).__name__} after {time.perf_counter() - t0:.0f} s: {e}"
                        )
                        continue
                    secs.append(wall)
                    cpus.append(cpu)
                r = Result(case.name, direction, secs, cpus, cipher, failures)
                results.append(r)
                print(
                    f"{direction} {r.mbps(size):>7} MB/s  {case.name}  {failures}",
                    file=sys.stderr,
                    flush=True,
                )
    write_report(args.out, results, size, args.repeat)
    return 0


def write_report(out: Path, results: list[Result], size: int, repeat: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ssh_v = subprocess.run(
        ["ssh", "-V"], check=False, capture_output=True, text=True, timeout=10
    ).stderr.strip()
    lines = [
        "# SSH exec-channel throughput (loopback sshd)",
        "",
        (
            f"Generated by `benchmarks/ssh_bench.py` on {datetime.date.today()}: {size >> 20} MiB "
            f"per run, median of {repeat}, client and sshd on the same host "
            f"({os.cpu_count()} CPUs, {cpu})."
        ),
        f"Python {platform.python_version()}, paramiko {paramiko.__version__}, {ssh_v}.",
        "",
        (
            "`send`: random bytes in 1 MiB writes to `cat >/dev/null` (source -> agent). "
            "`recv`: `head -c SIZE /dev/zero` read in 1 MiB recv calls (agent -> source). "
            "CPU: client process seconds (for OpenSSH: the ssh child)."
        ),
        "",
        "| case | dir | MB/s | s (median) | runs (s) | client CPU s |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        runs = [f"{s:.2f}" for s in r.seconds] + [f"FAILED ({f})" for f in r.failures]
        med = "-" if r.median is None else f"{r.median:.2f}"
        cpu_s = f"{statistics.median(r.cpu):.2f}" if r.cpu else "-"
        lines.append(
            f"| {r.case} | {r.direction} | {r.mbps(size)} | {med} | {', '.join(runs)} | {cpu_s} |"
        )
    text = "\n".join(lines) + "\n"
    # Hand-written findings below the marker survive a re-run.
    if out.exists() and NOTES_MARKER in (old := out.read_text()):
        text += "\n" + old[old.index(NOTES_MARKER) :]
    out.write_text(text)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    raise SystemExit(main())
