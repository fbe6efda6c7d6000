"""Micro-benchmark of migrate.fs.capture and migrate.fs.extract: capture and apply a ~1 GiB tree of mixed files.

    .venv/bin/python benchmarks/layers_bench.py [--size-mb 1024] [--dir /var/tmp] [--out FILE]

Builds the tree (large, medium and small files, plus a sparse file that costs nothing), then
times, with a warm page cache:
  capture -> discard          the reader side alone
  tar file -> apply           the writer side alone (page cache; sync timed separately),
                              and again into tmpfs to leave the disk out
  capture -> pipe -> apply    both ends in one process, as the agent pipeline streams it
  GNU tar c | tar x           a reference point on the same tree
and writes a Markdown table (default benchmarks/results/layers.md). Needs root for chown.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from migrate.fs import capture, extract

MiB = 1 << 20


def build_tree(root: Path, size_mb: int) -> tuple[int, int]:
    """Half the bytes in 128 MiB files, a quarter in 256 KiB files, a quarter in 8 KiB files."""
    block = os.urandom(MiB)
    budget = size_mb * MiB
    files = 0
    large = root / "large"
    large.mkdir(parents=True)
    for i in range(max(1, budget // 2 // (128 * MiB))):
        with open(large / f"blob-{i}", "wb") as f:
            f.writelines(block for _ in range(128))
        files += 1
    for kind, size in (("medium", 256 * 1024), ("small", 8 * 1024)):
        count = budget // 4 // size
        for i in range(count):
            d = root / kind / f"d{i // 512:03d}"
            if i % 512 == 0:
                d.mkdir(parents=True)
            off = (i * 4099) % (MiB - size)
            (d / f"f{i}").write_bytes(block[off : off + size])
            files += 1
    with open(root / "sparse-4g", "wb") as f:
        f.write(block)
        f.truncate(4 << 30)
    files += 1
    total = sum(
        os.stat(os.path.join(dp, n)).st_blocks * 512
        for dp, _, names in os.walk(root)
        for n in names
    )
    return files, total


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "layers.md"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="layers-bench-", dir=args.dir))
    try:
        src = work / "src"
        t0 = time.perf_counter()
        files, disk_bytes = build_tree(src, args.size_mb)
        t_build = time.perf_counter() - t0
        rows: list[tuple[str, float, str]] = []

        def mbps(seconds: float) -> str:
            return f"{disk_bytes / MiB / seconds:,.0f} MB/s, {files / seconds:,.0f} files/s"

        cap = capture.capture(src)
        t, _ = timed(lambda: sum(len(c) for c in cap))
        stream_bytes = cap.stats.stream_bytes
        rows.append(("capture -> discard", t, mbps(t)))

        tar_path = work / "layer.tar"
        with open(tar_path, "wb") as out:
            capture.capture_to(src, out)
        os.sync()  # the tar's own writeback must not be billed to apply
        dst = work / "dst-file"
        dst.mkdir()
        with open(tar_path, "rb", buffering=0) as f:
            t, _ = timed(lambda: extract.apply(f, dst, policy=extract.ROOTFS_POLICY))
        t_sync, _ = timed(os.sync)
        rows.append(("tar file -> apply", t, mbps(t)))
        rows.append(("  (+ sync afterwards)", t + t_sync, mbps(t + t_sync)))
        shutil.rmtree(dst)
        os.sync()

        # The same into tmpfs: what the code costs, without this machine's disk.
        shm = Path("/dev/shm")
        if shm.is_dir() and shutil.disk_usage(shm).free > 3 * disk_bytes:
            dst = Path(tempfile.mkdtemp(prefix="layers-bench-", dir=shm))
            try:
                with open(tar_path, "rb", buffering=0) as f:
                    t, _ = timed(lambda: extract.apply(f, dst, policy=extract.ROOTFS_POLICY))
                rows.append(("tar file -> apply into tmpfs", t, mbps(t)))
            finally:
                shutil.rmtree(dst, ignore_errors=True)
        tar_path.unlink()

        dst = work / "dst-pipe"
        dst.mkdir()
        r, w = os.pipe()
        try:
            # 64 KiB by default: far smaller than the chunks a network stream delivers.
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, MiB)
        except OSError:
            pass

        def produce() -> None:
            with open(w, "wb", buffering=0) as out:
                out.writelines(capture.capture(src))

        def pipeline() -> None:
            thread = threading.Thread(target=produce)
            thread.start()
            with open(r, "rb", buffering=0) as inp:
                extract.apply(inp, dst, policy=extract.ROOTFS_POLICY)
            thread.join()

        t, _ = timed(pipeline)
        rows.append(("capture -> pipe -> apply", t, mbps(t)))
        os.sync()

        if shutil.which("tar"):
            dst = work / "dst-gnu"
            dst.mkdir()
            cmd = (
                f"tar --xattrs --sparse -cf - -C {shlex.quote(str(src))} . | "
                f"tar --xattrs --xattrs-include='*' -xf - -C {shlex.quote(str(dst))}"
            )
            t, _ = timed(lambda: subprocess.run(cmd, shell=True, check=True))
            rows.append(("GNU tar c \\| tar x (reference)", t, mbps(t)))

        lines = [
            "# layers micro-benchmark",
            "",
            (
                f"Tree: {files} files, {disk_bytes / MiB:,.0f} MiB of data on disk "
                f"(half in 128 MiB files, a quarter each in 256 KiB and 8 KiB files, plus a 4 GiB "
                f"sparse file holding 1 MiB); tar stream {stream_bytes / MiB:,.0f} MiB. "
                f"Built in {t_build:.1f} s."
            ),
            "",
            (
                f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
                f"Python {platform.python_version()}; source and target on the same filesystem; "
                "warm page cache (the tree was just written); apply is timed to the page cache "
                "(the sync row adds the writeback). Rows that write to disk vary a lot from "
                "run to run on a shared VM: compare them with the GNU tar row of the same run; "
                "the tmpfs row shows what the code itself costs."
            ),
            "",
            "| run | seconds | throughput |",
            "| --- | ---: | --- |",
            *(f"| {name} | {sec:.2f} | {rate} |" for name, sec, rate in rows),
            "",
            f"Command: `python benchmarks/layers_bench.py --size-mb {args.size_mb}` (one run).",
            "",
        ]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines))
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
