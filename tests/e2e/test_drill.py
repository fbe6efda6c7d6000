"""`migrate drill` on the lab over real SSH (issue 4, acceptance 5): the source keeps running
with its state, the copy on B is verified in isolation and removed, the report says what
happened; a failing --verify-cmd fails the drill; --keep leaves the isolated copy running."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from conftest import AB
from test_run import COUNTER, _count, _counting, transport_args  # noqa: F401 - fixture
from test_run_leftovers import _copies_with

from migrate.lab.config import migrate_executable

STAGING = Path("/var/lib/migrate/staging")
DRILL_LABEL = "org.migrate.source.drill"


def _start(docker_a: Any, name: str, image: str, marker: str) -> None:
    # The marker sits in the shell's memory, so the checkpoint's pages (and any copy of them
    # left behind on B) contain it.
    script = f'm="{marker}"; ' + COUNTER
    docker_a.containers.run(image, ["sh", "-c", script], name=name, detach=True)
    if not _counting(docker_a, name):
        raise AssertionError("counter did not start")


def _assert_nothing_left_on_b(docker_b: Any, rep: dict[str, Any], marker: str) -> None:
    assert not docker_b.containers.list(
        all=True, filters={"label": f"{DRILL_LABEL}={rep['drill_id']}"}
    )
    assert not docker_b.containers.list(all=True, filters={"name": rep["drill_name"]})
    root = Path(docker_b.info()["DockerRootDir"])
    if rep["drill_container_id"]:
        assert not (root / "containers" / rep["drill_container_id"]).exists()
    for side in ("drill-", "drill-source-"):
        assert not (STAGING / f"{side}{rep['drill_id']}").exists(), "staging left behind"
    assert _copies_with(marker.encode()) == [], "a copy of the checkpoint was left"


def _drill(
    migrate_on_a: Any, migrate_args: list[str], name: str, report: Path, *extra: str
) -> tuple[Any, dict[str, Any]]:
    p = migrate_on_a("drill", name, *migrate_args, "--report", str(report), "--json", *extra)
    rep = json.loads(p.stdout)
    assert json.loads(report.read_text()) == rep
    return p, rep


def test_drill_passes_and_leaves_nothing(
    migrate_on_a: Any,
    transport_args: list[str],  # noqa: F811
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    marker = f"MARK-{container_name}-{time.time_ns()}"
    _start(docker_a, container_name, test_image, marker)
    started = docker_a.api.inspect_container(container_name)["State"]["StartedAt"]
    report = tmp_path / "drill.json"
    p, rep = _drill(
        migrate_on_a,
        transport_args,
        container_name,
        report,
        "--settle",
        "1",
        "--verify-cmd",
        "sh -c 'test $(cat /tmp/count) -gt 0'",
    )
    assert p.returncode == 0, p.stderr
    assert rep["status"] == "passed" and rep["reason"] is None
    # Over SSH the bundle travels through the OpenSSH bulk connection (--bulk auto).
    ssh = transport_args[transport_args.index("--to") + 1].startswith("ssh://")
    assert rep["stream_channel"] == ("openssh" if ssh else "local"), rep
    # The source never stopped: it still counts, from where it was (not restarted).
    c = docker_a.containers.get(container_name)
    assert c.status == "running" and rep["source_running"] is True
    n = _count(docker_a, container_name)
    time.sleep(0.5)
    assert _count(docker_a, container_name) > n >= 20
    assert c.attrs["RestartCount"] == 0 and c.attrs["State"]["StartedAt"] == started
    # The report has what a DR audit needs.
    assert rep["recovery_point"] and rep["recovery_time_s"] > 0 and rep["restore_s"] > 0
    assert rep["restore_s"] <= rep["recovery_time_s"]
    assert 0 < rep["source_pause_s"] < 30
    sizes = rep["sizes"]
    assert sizes["bundle"] > 0 and sizes["checkpoint"] > 0 and sizes["image"] > 0
    assert "rootfs" in sizes and sizes["wire"] > 0
    v = rep["verification"]
    assert v["running"] is True and v["exit_code"] == 0 and v["settle_s"] == 1
    assert v["command"] == ["sh", "-c", "test $(cat /tmp/count) -gt 0"]
    assert rep["kept"] is False and rep["teardown"]["container_removed"] is True
    md = report.with_suffix(".md").read_text()
    assert "PASSED" in md and rep["recovery_point"] in md and "recovery time" in md
    _assert_nothing_left_on_b(docker_b, rep, marker)


def test_failing_verify_cmd_fails_the_drill(
    ab: AB,
    tmp_path: Path,
) -> None:
    marker = f"MARK-{ab.container_name}-{time.time_ns()}"
    _start(ab.docker_a, ab.container_name, ab.test_image, marker)
    report = tmp_path / "drill.json"
    p, rep = _drill(
        ab.migrate_on_a,
        ab.migrate_args,
        ab.container_name,
        report,
        "--settle",
        "0",
        "--verify-cmd",
        "sh -c 'echo not ready >&2; exit 3'",
    )
    assert p.returncode == 1, p.stderr
    assert rep["status"] == "failed"
    assert "exited with 3" in rep["reason"] and "exited with 3" in p.stderr
    assert rep["verification"]["exit_code"] == 3
    assert "not ready" in rep["verification"]["output"]
    md = report.with_suffix(".md").read_text()
    assert "FAILED" in md and "exited with 3" in md
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    _assert_nothing_left_on_b(ab.docker_b, rep, marker)


def test_keep_leaves_an_isolated_copy(
    ab: AB,
    tmp_path: Path,
) -> None:
    _start(ab.docker_a, ab.container_name, ab.test_image, "keep")
    p, rep = _drill(
        ab.migrate_on_a,
        ab.migrate_args,
        ab.container_name,
        tmp_path / "r.json",
        "--settle",
        "0",
        "--keep",
    )
    try:
        assert p.returncode == 0, p.stderr
        assert rep["kept"] is True and rep["verification"]["command"] is None
        copy = ab.docker_b.containers.get(rep["drill_name"])
        assert copy.status == "running"
        assert copy.attrs["HostConfig"]["NetworkMode"] == "none"
        assert not copy.attrs["HostConfig"]["PortBindings"]
        assert copy.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
        assert copy.labels[DRILL_LABEL] == rep["drill_id"]
        # Only the loopback interface inside: nothing outside can reach it.
        devs = copy.exec_run(["cat", "/proc/net/dev"]).output.decode().splitlines()[2:]
        assert [d.split(":")[0].strip() for d in devs] == ["lo"]
        # It resumed from the checkpoint (kept counting from there).
        n = int(copy.exec_run(["cat", "/tmp/count"]).output)
        assert n >= 20
        assert ab.docker_a.containers.get(ab.container_name).status == "running"
    finally:
        for c in ab.docker_b.containers.list(all=True, filters={"name": rep["drill_name"]}):
            c.remove(force=True)


def test_not_running_container_is_refused(
    ab: AB,
    tmp_path: Path,
) -> None:
    ab.docker_a.containers.create(ab.test_image, ["sleep", "100"], name=ab.container_name)
    p, rep = _drill(ab.migrate_on_a, ab.migrate_args, ab.container_name, tmp_path / "r.json")
    assert p.returncode == 3, p.stderr
    assert rep["status"] == "refused" and "created" in rep["reason"]
    assert rep["error"]["code"] == "precheck.container_not_running"


def test_drill_with_a_named_volume_uses_its_own_copy(
    ab: AB,
    tmp_path: Path,
) -> None:
    vol = f"mt-vol-{uuid.uuid4().hex[:10]}"
    script = "echo hello > /data/hello; while true; do sleep 0.2; done"
    try:
        # The standby holds a volume of the same name (a replica, say): the drill must not
        # touch it.
        replica = ab.docker_b.volumes.create(vol)
        ab.docker_a.containers.run(
            ab.test_image,
            ["sh", "-c", script],
            name=ab.container_name,
            detach=True,
            volumes={vol: {"bind": "/data", "mode": "rw"}},
        )
        time.sleep(1)
        p, rep = _drill(
            ab.migrate_on_a,
            ab.migrate_args,
            ab.container_name,
            tmp_path / "r.json",
            "--settle",
            "0",
            "--verify-cmd",
            "grep -q hello /data/hello",
        )
        assert p.returncode == 0, p.stderr
        assert rep["status"] == "passed" and rep["sizes"]["volumes"] > 0
        own = f"{vol}-drill-{rep['drill_id'][:8]}"
        assert rep["teardown"]["volumes_removed"] == [own]
        assert not ab.docker_b.volumes.list(filters={"name": own})
        assert Path(replica.attrs["Mountpoint"]).is_dir()
        assert not any(Path(replica.attrs["Mountpoint"]).iterdir()), "the replica was written"
        assert ab.docker_a.containers.get(ab.container_name).status == "running"
    finally:
        for client in (ab.docker_a, ab.docker_b):
            for ctr in client.containers.list(all=True, filters={"name": ab.container_name}):
                ctr.remove(force=True)
            for v in client.volumes.list(filters={"name": vol}):
                v.remove(force=True)


def test_bind_mount_is_refused(
    ab: AB,
    tmp_path: Path,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image,
        ["sleep", "100"],
        name=ab.container_name,
        detach=True,
        volumes={"/tmp": {"bind": "/host-tmp", "mode": "ro"}},
    )
    before = {c.id for c in ab.docker_b.containers.list(all=True)}
    p, rep = _drill(ab.migrate_on_a, ab.migrate_args, ab.container_name, tmp_path / "r.json")
    assert p.returncode == 3, p.stderr
    assert rep["status"] == "refused" and rep["error"]["code"] == "precheck.unsupported"
    assert "bind mount" in rep["reason"] and rep["recovery_point"] is None
    assert {c.id for c in ab.docker_b.containers.list(all=True)} == before


def _agents_in(netns: str) -> list[int]:
    """Pids of this worktree's `migrate agent` processes in the lab host's network namespace."""
    want = os.stat(f"/run/netns/{netns}").st_ino
    exe = str(migrate_executable())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ns = os.readlink(proc / "ns" / "net")
        except OSError:
            continue
        if exe.encode() in argv and b"agent" in argv and ns == f"net:[{want}]":
            pids.append(int(proc.name))
    return pids


def test_copy_left_by_a_killed_agent_is_swept_by_the_next_drill(
    ab: AB,
    lab_env: dict[str, str],
    tmp_path: Path,
) -> None:
    _start(ab.docker_a, ab.container_name, ab.test_image, "sweep")
    result: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: result.update(
            p=ab.migrate_on_a(
                "drill", ab.container_name, *ab.migrate_args, "--settle", "120", "--json"
            )
        )
    )
    t.start()
    try:
        deadline = time.monotonic() + 60
        copies: list[Any] = []
        while not copies and time.monotonic() < deadline:
            copies = [
                c
                for c in ab.docker_b.containers.list(filters={"label": DRILL_LABEL})
                if c.name.startswith(f"{ab.container_name}-drill-")
            ]
            time.sleep(0.2)
        assert copies, "the drill copy never appeared on B"
        agents = _agents_in(lab_env["MIGRATE_LAB_B_NETNS"])
        assert agents, "no agent found on B"
        for pid in agents:
            os.kill(pid, signal.SIGKILL)  # no clean exit: its copy stays behind
    finally:
        t.join(180)
    p = result["p"]
    assert p.returncode == 1, p.stderr
    first = json.loads(p.stdout)
    assert first["status"] == "failed"
    copy = ab.docker_b.containers.get(first["drill_name"])
    assert copy.status == "running", "the killed agent's copy should still be there"
    record = Path("/var/lib/migrate/drills") / f"{first['drill_id']}.json"
    assert record.is_file()
    # The next drill to B removes it before it restores its own copy.
    p, rep = _drill(
        ab.migrate_on_a, ab.migrate_args, ab.container_name, tmp_path / "r.json", "--settle", "0"
    )
    assert p.returncode == 0, p.stderr
    assert not ab.docker_b.containers.list(all=True, filters={"name": first["drill_name"]})
    assert not record.exists()
    assert not list(Path("/var/lib/migrate/drills").glob(f"{rep['drill_id']}.*"))
