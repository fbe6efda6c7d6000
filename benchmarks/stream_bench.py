#!/usr/bin/env python3
"""Where does the checkpoint stream wait? (issue 8 goal 4)

Streams a directory shaped like a CRIU image dir (one big ``pages-1.img`` of memfill's
workload bytes plus a few small files) from lab host a to lab host b with migrate's own data
path, and nothing else: ``capture.capture`` -> ``Connection.send_stream`` (zstd) -> migrate's
SSH channel (paramiko) -> sshd on b -> a sink process on b that reads the stream with
``StreamReader`` and ``extract.extract`` into a directory, as the agent's ``put_checkpoint``
does. In the same run, OpenSSH's ``ssh b 'cat >/dev/null'`` of the same number of bytes.

Every stage is timed from inside (wall seconds spent in it, per thread) so that waiting can
be told from working: on the source, reading the files (``capture``), compressing, and
blocking in the channel's ``sendall``; on the sink, waiting in ``recv``, decompressing, and
parsing + writing. Plus each process's CPU seconds.

    .venv/bin/python benchmarks/stream_bench.py [--mib 1024] [--text 50] [--runs 3]
        [--lab mwb --subnet 10.213.31.0/24] [--json FILE]

Prints each run on stderr and, with --json, appends the summary as one JSON line to FILE; the
studies made from those lines are benchmarks/results/stream.md, stream-bulk.md and
stream-adaptive.md (each lists its JSON lines at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MiB = 1 << 20
SINK_ROOT = Path("/var/tmp")


class StageClock:
    """Wall seconds spent inside named stages (thread-safe; stages may run in any thread)."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.s[name] = self.s.get(name, 0.0) + dt


class TimedChannel:
    """A Channel proxy that times recv and sendall."""

    def __init__(self, ch: Any, clock: StageClock) -> None:
        self.ch, self.clock = ch, clock

    def recv(self, n: int) -> bytes:
        t = time.perf_counter()
        try:
            return bytes(self.ch.recv(n))
        finally:
            self.clock.add("recv", time.perf_counter() - t)

    def sendall(self, data: bytes) -> None:
        t = time.perf_counter()
        try:
            self.ch.sendall(data)
        finally:
            self.clock.add("sendall", time.perf_counter() - t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ch, name)


def timed_iter(it: Iterator[bytes], clock: StageClock, name: str) -> Iterator[bytes]:
    while True:
        t = time.perf_counter()
        try:
            chunk = next(it)
        except StopIteration:
            clock.add(name, time.perf_counter() - t)
            return
        clock.add(name, time.perf_counter() - t)
        yield chunk


class TimedReader:
    def __init__(self, r: Any, clock: StageClock) -> None:
        self.r, self.clock = r, clock

    def read(self, n: int = -1) -> bytes:
        t = time.perf_counter()
        try:
            return bytes(self.r.read(n))
        finally:
            self.clock.add("read_stream", time.perf_counter() - t)


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- sink (runs on b, under sshd) ------------------------------------------------------------


def sink(target: Path) -> int:
    from migrate.fs import extract
    from migrate.transport.stdio import StdioChannel
    from migrate.wire.connection import Connection
    from migrate.wire.framing import decode_control
    from migrate.wire.messages import response_message
    from migrate.wire.stream import StreamReader

    clock = StageClock()
    ch = TimedChannel(StdioChannel.claim_stdio(), clock)
    conn = Connection(ch, timeout=120)  # type: ignore[arg-type]
    req = decode_control(conn.recv_frame().body)
    stream_conn = conn
    listener = None
    if req["method"] == "bulk_open":  # --mode bulk: as the agent's h_bulk_open does
        from migrate.agent.server import LAZY_WORK_ROOT
        from migrate.transport.bulk_sink import BulkListener
        from migrate.wire.framing import KIND_CONTROL
        from migrate.wire.messages import stream_header

        LAZY_WORK_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
        listener = BulkListener(LAZY_WORK_ROOT)
        conn.send_control(
            response_message(req["id"], {"socket": str(listener.path), "token": listener.token})
        )
        req = decode_control(conn.recv_frame().body)
        end = listener.wait(10)
        assert end is not None and req.get("via") == "bulk", (listener.error, req)
        stream_conn = Connection(TimedChannel(end, clock), timeout=120)  # type: ignore[arg-type]
        head = stream_conn.recv_frame()
        assert head.kind == KIND_CONTROL and decode_control(head.body) == stream_header(req["id"])
    clock.s.clear()
    t0, c0 = time.perf_counter(), cpu_s()
    target.mkdir(parents=True)
    reader = StreamReader(stream_conn)
    stats = extract.extract(TimedReader(reader, clock), target, policy=extract.CHECKPOINT_POLICY)  # type: ignore[arg-type]
    reader.drain()
    wall = time.perf_counter() - t0
    result = {
        "wall": wall,
        "cpu": cpu_s() - c0,
        "stages": clock.s,
        "bytes": stats.bytes,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    conn.send_control(response_message(req["id"], result))
    shutil.rmtree(target, ignore_errors=True)
    if listener is not None:
        listener.close()
    return 0


# --- source (runs on a) ----------------------------------------------------------------------


class TimedBulk:
    """The bulk link, its writes timed as ``sendall`` (the same stage as paramiko's)."""

    def __init__(self, link: Any, clock: StageClock) -> None:
        self.link, self.clock = link, clock

    def sendall(self, data: bytes) -> None:
        t = time.perf_counter()
        try:
            self.link.sendall(data)
        finally:
            self.clock.add("sendall", time.perf_counter() - t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.link, name)


def source(
    src: Path,
    dest: str,
    key: str,
    known: str,
    sink_dir: str,
    level: int,
    threads: int,
    mode: str = "paramiko",
    agent_command: str = "",
    adaptive: bool = False,
) -> int:
    import dataclasses

    from migrate.fs import capture
    from migrate.transport.destination import SshOptions, parse_destination
    from migrate.transport.openssh import BulkLink
    from migrate.transport.ssh import connect
    from migrate.wire import stream as wire_stream
    from migrate.wire.client import AgentClient
    from migrate.wire.connection import Connection
    from migrate.wire.methods import BulkOpen, PutCheckpoint

    if os.environ.get("STREAM_BENCH_SWITCH"):
        sw = float(os.environ["STREAM_BENCH_SWITCH"])
        wire_stream.SWITCH_INTERVAL_S = sw if sw > 0 else None
    clock = StageClock()
    session = connect(
        parse_destination(dest), SshOptions(identity=Path(key), known_hosts=Path(known))
    )
    cmd = f"{sys.executable} {HERE / 'stream_bench.py'} --sink {sink_dir}"
    sch = session.exec(cmd, close_session=True)
    ch = TimedChannel(sch, clock)
    conn = Connection(ch, timeout=120, level=level, threads=threads)  # type: ignore[arg-type]
    conn.adaptive = adaptive  # the sink reads multi-frame streams (StreamReader, as the agent)
    link = None
    if mode == "bulk":  # as migrate/wire/bulk.py's attach_bulk, opened before timing
        opened = AgentClient(conn).call(BulkOpen()).result
        target = dataclasses.replace(sch.bulk_target(), agent_command=agent_command)
        link = BulkLink.start(target, opened.socket, opened.token)
        conn.bulk = TimedBulk(link, clock)  # type: ignore[assignment]
        clock.s.clear()
    t0, c0 = time.perf_counter(), cpu_s()
    # The sink answers with its own measurements, not an agent's put_checkpoint result: read
    # its raw answer (Connection.exchange, the typed client's transport).
    req = PutCheckpoint(migration_id="bench")
    res, st = conn.exchange(
        req.method,
        req.model_dump(exclude_unset=True),
        stream=timed_iter(capture.capture(src), clock, "capture"),
        timeout=600,
    )
    wall = time.perf_counter() - t0
    assert st is not None
    out = {
        "wall": wall,
        "cpu": cpu_s() - c0,
        "stages": clock.s,
        "raw": st["raw"],
        "wire": st["wire"],
        "fast_raw": st.get("fast_raw", 0),
        "sink": res,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    conn.close()
    if link is not None:  # the ssh child has exited: its CPU and RSS are ours to read
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["ssh_cpu"] = ru.ru_utime + ru.ru_stime
        out["ssh_peak_rss_kb"] = ru.ru_maxrss
    out["mode"] = mode
    print(json.dumps(out))
    return 0


# --- driver (root namespace) -----------------------------------------------------------------


def make_source(root: Path, mib: int, text: int) -> int:
    exe = root / "memfill"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "memfill.c")], check=True)
    img = root / "img"
    img.mkdir()
    with open(img / "pages-1.img", "wb") as f:
        subprocess.run([str(exe), "--emit", str(mib), str(text)], stdout=f, check=True)
    for i in range(40):  # CRIU's small images (core, mm, fdinfo...)
        (img / f"small-{i}.img").write_bytes(os.urandom(2048 + 97 * i))
    exe.unlink()
    return sum(p.stat().st_size for p in img.iterdir())


def run_raw(lab: Any, a: Any, path: Path, cipher: list[str]) -> float:
    base = lab.ssh_argv("b", "cat >/dev/null")
    argv = [base[0], *cipher, *base[1:]]
    tar = subprocess.Popen(["tar", "-C", str(path), "-cf", "-", "."], stdout=subprocess.PIPE)
    t0 = time.monotonic()
    c0 = children_cpu_s()
    subprocess.run(a.argv(argv), stdin=tar.stdout, check=True, timeout=600, capture_output=True)
    dt = time.monotonic() - t0
    RAW_CPU.append(children_cpu_s() - c0)  # the ssh client (and nsenter's exec of it)
    tar.wait()
    return dt


RAW_CPU: list[float] = []


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--known", help=argparse.SUPPRESS)
    ap.add_argument("--sink-dir", help=argparse.SUPPRESS)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--adaptive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help="zstd worker threads")
    ap.add_argument("--lab", default=os.environ.get("MIGRATE_BENCH_LAB", "mbench"))
    ap.add_argument("--subnet", default=os.environ.get("MIGRATE_BENCH_SUBNET", "10.213.20.0/24"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--text", type=int, default=50, help="percent of text (0: incompressible)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--label", default="", help="what this run measures (for the JSON)")
    ap.add_argument("--json", type=Path, help="append the summary as one JSON line here")
    ap.add_argument(
        "--modes",
        default="paramiko",
        help="comma-separated, run interleaved: paramiko (migrate's control "
        "channel) and/or bulk (the OpenSSH bulk connection), each optionally "
        "@LEVEL for its own zstd level (bulk@-5)",
    )
    ap.add_argument("--mode", default="paramiko", help=argparse.SUPPRESS)
    ap.add_argument("--agent-command", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        return sink(args.sink)
    if args.source:
        return source(
            args.source,
            args.dest,
            args.key,
            args.known,
            args.sink_dir,
            args.level,
            args.threads,
            args.mode,
            args.agent_command,
            args.adaptive,
        )
    return drive(args)


def drive(args: Any) -> int:
    modes = [m for m in args.modes.split(",") if m]
    # MODE or MODE@LEVEL (a zstd level for that leg only, e.g. bulk@-5) or MODE@adaptive
    # (level 1 with adaptive compression, as `migrate run` does by default)
    if not {m.split("@")[0] for m in modes} <= {"paramiko", "bulk"}:
        raise SystemExit(f"--modes: unknown mode in {args.modes!r}")

    from migrate.lab.config import LabConfig
    from migrate.lab.hosts import Lab

    lab = Lab(LabConfig(name=args.lab, subnet=args.subnet))
    lab.up()
    env = lab.env()
    a = lab.host("a")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    raws: list[float] = []
    with tempfile.TemporaryDirectory(dir=SINK_ROOT, prefix="stream-src-") as tmp:
        nbytes = make_source(Path(tmp), args.mib, args.text)
        src = Path(tmp) / "img"
        for i in range(args.runs):
            line = [f"run {i + 1}:"]
            for mode in modes:
                sink_dir = SINK_ROOT / f"stream-sink-{uuid.uuid4().hex[:8]}"
                p = a.run(
                    [
                        sys.executable,
                        str(HERE / "stream_bench.py"),
                        "--source",
                        str(src),
                        "--dest",
                        env["MIGRATE_LAB_B_URL"],
                        "--key",
                        env["MIGRATE_LAB_KEY"],
                        "--known",
                        env["MIGRATE_LAB_KNOWN_HOSTS"],
                        "--sink-dir",
                        str(sink_dir),
                        *(
                            ["--level", "1", "--adaptive"]
                            if mode.endswith("@adaptive")
                            else ["--level", mode.split("@")[1] if "@" in mode else str(args.level)]
                        ),
                        "--threads",
                        str(args.threads),
                        "--mode",
                        mode.split("@")[0],
                        "--agent-command",
                        env["MIGRATE_AGENT_COMMAND"],
                    ],
                    timeout=900,
                )
                r = json.loads(p.stdout.strip().splitlines()[-1])
                results[mode].append(r)
                line.append(f"{mode} {r['raw'] / r['wall'] / 1e6:.0f} MB/s ({r['wall']:.2f} s)")
                print(
                    f"  {mode} source",
                    json.dumps({k: round(v, 2) for k, v in r["stages"].items()}),
                    f"cpu {r['cpu']:.2f}"
                    + (f" + ssh {r['ssh_cpu']:.2f}" if "ssh_cpu" in r else "")
                    + f" rss {r['peak_rss_kb'] // 1024} MiB",
                    file=sys.stderr,
                )
                sk = r["sink"]
                print(
                    f"  {mode} sink  ",
                    json.dumps({k: round(v, 2) for k, v in sk["stages"].items()}),
                    f"wall {sk['wall']:.2f} cpu {sk['cpu']:.2f} rss {sk['peak_rss_kb'] // 1024} MiB",
                    file=sys.stderr,
                )
            raw = run_raw(lab, a, src, ["-c", "aes128-gcm@openssh.com"])
            raws.append(raw)
            line.append(
                f"OpenSSH {nbytes / raw / 1e6:.0f} MB/s ({raw:.2f} s, ssh cpu {RAW_CPU[-1]:.2f})"
            )
            print(
                " ".join(line)
                + "; ratios "
                + ", ".join(
                    f"{m} {(results[m][-1]['raw'] / results[m][-1]['wall']) / (nbytes / raw):.2f}"
                    for m in modes
                ),
                file=sys.stderr,
            )
    med_raw = statistics.median(raws)
    summary: dict[str, Any] = {
        "label": args.label,
        "mib": args.mib,
        "text": args.text,
        "level": args.level,
        "threads": args.threads,
        "bytes": nbytes,
        "modes": modes,
        "openssh_s": [round(x, 3) for x in raws],
        "openssh_cpu_s": [round(x, 2) for x in RAW_CPU],
        "median_openssh_s": med_raw,
    }
    for m in modes:
        rs = results[m]
        # Effective rate: raw bytes per second; the ratio per run is against the OpenSSH run
        # of the same round (same minutes).
        ratios = [(r["raw"] / r["wall"]) / (nbytes / x) for r, x in zip(rs, raws, strict=True)]
        summary[m] = {
            "wall_s": [round(r["wall"], 3) for r in rs],
            "mb_s": [round(r["raw"] / r["wall"] / 1e6, 1) for r in rs],
            "ratio_per_run": [round(x, 3) for x in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
            "median_wall_s": statistics.median(r["wall"] for r in rs),
            "runs": rs,
        }
        print(
            f"median {m}: {nbytes / summary[m]['median_wall_s'] / 1e6:.0f} MB/s, ratio to "
            f"OpenSSH per run {summary[m]['ratio_per_run']} (median "
            f"{summary[m]['median_ratio']:.2f})",
            file=sys.stderr,
        )
    print(f"median OpenSSH: {nbytes / med_raw / 1e6:.0f} MB/s", file=sys.stderr)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
