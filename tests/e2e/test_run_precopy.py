"""Pre-copy of the read-write layer (migrate/fs/precopy.py): the layer is streamed while the
container runs and only what changed goes in the freeze. A workload that rewrites files (same
size), creates, deletes, renames and hard-links without pause right up to the freeze must
arrive exactly as it was frozen, in the layer and in a volume; a rollback after a pre-copy
leaves nothing on B.

A's upper dir (frozen) and B's (filled, not started yet) are compared at the
``source:wait:before_restore`` hook, byte for byte and inode attribute for attribute.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from conftest import AB

from migrate.fs.capture import OVERLAY_HOST_XATTRS
from migrate.lab.config import migrate_executable

SETUP = " && ".join(
    [
        "mkdir -p /data/static/dir /data/churn",
        "dd if=/dev/urandom of=/data/static/big bs=1M count=16 2>/dev/null",
        "dd if=/dev/urandom of=/data/static/once bs=1M count=1 2>/dev/null",
        "echo keep > /data/static/small && ln /data/static/small /data/static/small-link",
        "mkfifo /data/static/fifo && ln -s big /data/static/big-link",
        "echo r > /data/ra && printf 00000000 > /data/inplace",
        "rm /bin/true",  # a whiteout made before the pre-copy
        "dd if=/dev/urandom of=/vol/static bs=1M count=4 2>/dev/null && mkdir -p /vol/sub",
        "touch /tmp/ready",
    ]
)

# Run in A between the pre-copy and the pause: a file unchanged for seconds is rewritten in
# place with its size and mtime kept (only its ctime tells), gets a new hard link, and a
# directory of the pre-copy goes away.
LATE = " && ".join(
    [
        "touch -r /data/static/once /tmp/ref",
        "printf Z | dd of=/data/static/once bs=1 seek=1000 count=1 conv=notrunc 2>/dev/null",
        "touch -r /tmp/ref /data/static/once",
        "ln /data/static/small /data/static/late-link",
        "rmdir /data/static/dir",
    ]
)

# No sleep: the loop changes the layer until the freezer stops it mid-iteration.
CHURN = """
i=0
while true; do
  i=$((i+1))
  printf '%08d\\n' $i > /data/counter
  printf '%08d' $i | dd of=/data/inplace bs=8 count=1 conv=notrunc 2>/dev/null
  echo $i > /data/churn/f$i; rm -f /data/churn/f$((i-2))
  if [ $((i % 2)) = 0 ]; then mv /data/ra /data/rb; else mv /data/rb /data/ra; fi
  ln -f /data/counter /data/counter-link
  mkdir /data/d$i; rmdir /data/d$((i-1)) 2>/dev/null
  if [ $((i % 3)) = 0 ]; then rm -f /data/late-fifo; else mkfifo /data/late-fifo 2>/dev/null; fi
  printf '%08d\n' $i > /vol/counter; echo $i > /vol/sub/v$i; rm -f /vol/sub/v$((i-1))
  dd if=/dev/zero of=/data/racy.tmp bs=1M count=2 2>/dev/null; mv /data/racy.tmp /data/racy
done
"""


def tree(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything a copy of a layer must keep, per relative path: type, mode, owner, mtime,
    xattrs (host-local overlay ones excluded), content hash, hard-link group, link target."""
    base = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    first: dict[int, bytes] = {}

    def visit(rel: bytes) -> None:
        path = base + b"/" + rel if rel else base
        s = os.lstat(path)
        names = sorted(
            n for n in os.listxattr(path, follow_symlinks=False) if n not in OVERLAY_HOST_XATTRS
        )
        xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
        entry: tuple[Any, ...] = (
            stat.S_IFMT(s.st_mode),
            stat.S_IMODE(s.st_mode),
            s.st_uid,
            s.st_gid,
            xattrs,
        )
        if not stat.S_ISLNK(s.st_mode):
            entry += (s.st_mtime_ns,)
        if stat.S_ISREG(s.st_mode):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            entry += (s.st_size, digest, first.setdefault(s.st_ino, rel), s.st_nlink)
        elif stat.S_ISLNK(s.st_mode):
            entry += (os.readlink(path),)
        elif stat.S_ISCHR(s.st_mode):
            entry += (s.st_rdev,)
        out[rel] = entry
        if stat.S_ISDIR(s.st_mode):
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name if rel else name)

    visit(b"")
    return out


def upper_dir(client: Any, name: str) -> Path:
    return Path(client.api.inspect_container(name)["GraphDriver"]["Data"]["UpperDir"])


def volume_dir(client: Any, name: str) -> Path:
    return Path(client.volumes.get(name).attrs["Mountpoint"])


def start_churn(client: Any, image: str, name: str, volume: str) -> Any:
    c = client.containers.run(
        image,
        ["sh", "-c", SETUP + " && " + CHURN],
        name=name,
        volumes={volume: {"bind": "/vol", "mode": "rw"}},
        detach=True,
    )
    deadline = time.monotonic() + 30
    while c.exec_run(["cat", "/tmp/ready"]).exit_code != 0:
        assert time.monotonic() < deadline, c.logs()
        time.sleep(0.1)
    # The static files must be older than the racy margin when the pre-copy starts.
    time.sleep(2.5)
    return c


def wait_step(mark: Path, proc: subprocess.Popen[str], step: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mark.exists():
            fields = mark.read_text().split()
            if len(fields) >= 2 and fields[1] == step:
                return
        if proc.poll() is not None:
            raise AssertionError(
                f"migrate exited early ({proc.returncode}): "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError(f"the fault hook {step} was never reached")


def test_changed_in_the_last_instant_arrives_exactly(
    lab: Any,
    ab: AB,
    tmp_path: Path,
    volume_name: str,
) -> None:
    start_churn(ab.docker_a, ab.test_image, ab.container_name, volume_name)
    upper_a = upper_dir(ab.docker_a, ab.container_name)
    mark = tmp_path / "mark"
    proc = lab.host("a").popen(
        [str(migrate_executable()), "run", ab.container_name, *ab.migrate_args, "--json"],
        env={
            **lab.env(),
            "MIGRATE_FAULTS": "source:wait:after_precopy,source:wait:before_restore",
            "MIGRATE_FAULT_MARK": str(mark),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_step(mark, proc, "after_precopy")
        at_precopy = (upper_a / "data" / "counter").read_bytes()
        once = os.stat(upper_a / "data" / "static" / "once")
        res = ab.docker_a.containers.get(ab.container_name).exec_run(["sh", "-c", LATE])
        assert res.exit_code == 0, res.output
        after = os.stat(upper_a / "data" / "static" / "once")
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            once.st_ino,
            once.st_size,
            once.st_mtime_ns,
        )
        time.sleep(0.5)  # the workload keeps going: changes after the pre-copy are certain
        mark.unlink()
        wait_step(mark, proc, "before_restore")
        # A is frozen and checkpointed, B's layer is filled and not started: they must match.
        frozen = tree(upper_a)
        arrived = tree(upper_dir(ab.docker_b, ab.container_name))
        vol_frozen = tree(volume_dir(ab.docker_a, volume_name))
        vol_arrived = tree(volume_dir(ab.docker_b, volume_name))
        assert (upper_a / "data" / "counter").read_bytes() != at_precopy
    finally:
        mark.unlink(missing_ok=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    missing = sorted(set(frozen) - set(arrived))
    extra = sorted(set(arrived) - set(frozen))
    differ = sorted(k for k in set(frozen) & set(arrived) if frozen[k] != arrived[k])
    assert not missing and not extra and not differ, (
        missing,
        extra,
        [(k, frozen[k], arrived[k]) for k in differ],
    )
    # The churning names exist (the test saw the workload's state, not an idle one).
    assert b"data/counter-link" in frozen and b"data/static/big" in frozen
    assert vol_frozen == vol_arrived
    assert b"counter" in vol_frozen and b"static" in vol_frozen
    rep = json.loads(out)
    b = rep["bytes"]
    # The 16 MiB file went during the pre-copy and was not sent again in the freeze.
    # /data/racy (2 MiB, always just rewritten) makes the first pass ask for a second one,
    # which sends it again: 16 + 1 + 2 + 2 MiB at least.
    assert b["rootfs_precopy"] >= 21 << 20, b
    assert b["rootfs_kept"] >= 16 << 20, b
    # What the freeze may legitimately send: /data/static/once (1 MiB, rewritten by LATE),
    # /data/racy (2 MiB) and, when the pause lands between the loop's dd and mv, a complete
    # /data/racy.tmp (2 MiB more), plus a few small files: under 6 MiB, far from the 16 MiB
    # that a re-sent static/big would add.
    assert b["rootfs"] < 6 << 20, b
    assert b["volumes_kept"] >= 4 << 20 and b["volumes"] < 1 << 20, b
    assert "precopy" in rep["phases"]
    # And the workload goes on on B.
    c = ab.docker_b.containers.get(ab.container_name)
    assert c.status == "running"
    n1 = c.exec_run(["cat", "/data/counter"]).output
    time.sleep(0.5)
    assert c.exec_run(["cat", "/data/counter"]).output != n1


def test_rollback_after_a_precopy_leaves_nothing_on_b(
    lab: Any,
    ab: AB,
    volume_name: str,
) -> None:
    start_churn(ab.docker_a, ab.test_image, ab.container_name, volume_name)
    overlay_b = lab.config.paths("b").data_root / "overlay2"
    layers_before = set(os.listdir(overlay_b))
    p = ab.run(
        "--json",
        env_extra={"MIGRATE_FAULTS": "source:after_precopy"},
    )
    assert p.returncode == 1, p.stderr
    assert "rolled back" in p.stderr.lower() or "rolled back" in p.stdout.lower(), p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert not ab.docker_b.containers.list(all=True, filters={"name": f"^/{ab.container_name}$"})
    with pytest.raises(docker.errors.NotFound):
        ab.docker_b.volumes.get(volume_name)  # made by this migration, pre-copied, removed
    # The pre-copied layer went with the container: no overlay2 directory was left.
    assert set(os.listdir(overlay_b)) - layers_before == set()
    # The source still churns.
    c = ab.docker_a.containers.get(ab.container_name)
    n1 = c.exec_run(["cat", "/data/counter"]).output
    time.sleep(0.5)
    assert c.exec_run(["cat", "/data/counter"]).output != n1
