"""`migrate export` on A, the file copied, `migrate import` on B (issue 4, acceptance 1-2)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import remove_containers
from test_run import COUNTER, _count, _counting, _start_counter, counter_image  # noqa: F401 - fixture
from test_run_fast_restore import _memory_sum, start_holder

from migrate.lab.config import migrate_executable


@pytest.fixture
def other_names(lab: Any) -> Iterator[list[str]]:
    names = [f"mt-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    remove_containers(lab.host("b").docker_host, *names)


def test_export_copy_import_twice(
    migrate_on_a: Any,
    run_on_b: Any,
    container_name: str,
    other_names: list[str],
    docker_a: Any,
    docker_b: Any,
    counter_image: str,  # noqa: F811 - the fixture from test_run
    tmp_path: Path,
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    bundle_a = tmp_path / "a" / "c.tar.zst"
    bundle_a.parent.mkdir()
    p = migrate_on_a("export", container_name, "-o", str(bundle_a), "--leave-running", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["source"] == "running" and res["bundle_bytes"] > 0
    assert docker_a.containers.get(container_name).status == "running"
    at_export = _count(docker_a, container_name)
    bundle_b = tmp_path / "b" / "c.tar.zst"  # "copied to B by any means"
    bundle_b.parent.mkdir()
    shutil.copyfile(bundle_a, bundle_b)
    exe = str(migrate_executable())
    for name in other_names:
        p = run_on_b([exe, "import", str(bundle_b), "--name", name, "--json"])
        assert p.returncode == 0, p.stderr
        c = docker_b.containers.get(name)
        assert c.status == "running"
        after = _count(docker_b, name)
        assert 20 <= after <= at_export + 5, "the counter restarted instead of continuing"
        time.sleep(0.5)
        assert _count(docker_b, name) > after, "the counter stopped"
        assert c.exec_run(["cat", "/created"]).output == b"new\n"
        assert c.exec_run(["cat", "/etc/motd"]).output == b"hello\nchanged\n"
        assert c.exec_run(["ls", "/etc/deleteme"]).exit_code != 0
        assert "SECRET=s3" in c.attrs["Config"]["Env"]


def test_import_feeds_the_memory_from_a_local_lazy_daemon(
    migrate_on_a: Any,
    run_on_b: Any,
    container_name: str,
    other_names: list[str],
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    """48 MiB of memory: the import gives Docker the checkpoint without it and a local
    lazy-pages daemon feeds it (not ~16 ms per MB through containerd); every byte arrives."""
    before = start_holder(docker_a, container_name, test_image)
    bundle = tmp_path / "h.tar.zst"
    p = migrate_on_a("export", container_name, "-o", str(bundle), "--leave-running", "--json")
    assert p.returncode == 0, p.stderr
    work_root = Path("/run/migrate")
    dirs_before = set(work_root.glob("import-*"))
    name = other_names[0]
    p = run_on_b([str(migrate_executable()), "import", str(bundle), "--name", name, "--json"])
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["restore_mode"] == "lazy_local", res
    assert docker_b.containers.get(name).status == "running"
    assert _memory_sum(docker_b, name) == before
    assert set(work_root.glob("import-*")) <= dirs_before, "lazy-pages work directory left"


def test_tampered_bundle_creates_nothing(
    migrate_on_a: Any,
    run_on_b: Any,
    container_name: str,
    other_names: list[str],
    docker_a: Any,
    docker_b: Any,
    counter_image: str,  # noqa: F811 - the fixture from test_run
    tmp_path: Path,
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    path = tmp_path / "c.tar.zst"
    p = migrate_on_a("export", container_name, "-o", str(path), "--leave-running")
    assert p.returncode == 0, p.stderr
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = {c.id for c in docker_b.containers.list(all=True)}
    p = run_on_b([str(migrate_executable()), "import", str(path), "--name", other_names[0]])
    assert p.returncode == 2, p.stderr
    assert "bundle.invalid" in p.stderr
    assert {c.id for c in docker_b.containers.list(all=True)} == before


def test_inspect_matches_docker_top(
    migrate_on_a: Any, container_name: str, docker_a: Any, test_image: str, tmp_path: Path
) -> None:
    script = "sleep 1001 & sleep 1002 & while true; do sleep 0.3; done"
    c = docker_a.containers.run(test_image, ["sh", "-c", script], name=container_name, detach=True)
    time.sleep(1)
    path = tmp_path / "c.tar.zst"
    top = {" ".join(p[-1:]) for p in c.top()["Processes"]}
    p = migrate_on_a("export", container_name, "-o", str(path), "--leave-running")
    assert p.returncode == 0, p.stderr
    p = migrate_on_a("inspect", str(path), "--json")
    assert p.returncode == 0, p.stderr
    ins = json.loads(p.stdout)
    cmds = {proc["cmdline"] for proc in ins["processes"]}
    assert {"sleep 1001", "sleep 1002", f"sh -c {script}"} <= cmds
    assert {"sleep 1001", "sleep 1002", f"sh -c {script}"} <= top
    root = [proc for proc in ins["processes"] if proc["ppid"] == 0]
    assert len(root) == 1 and root[0]["pid"] == 1
    assert all(proc["ppid"] == 1 for proc in ins["processes"] if proc["pid"] != 1)
    assert all(proc["pages"] > 0 for proc in ins["processes"])
    assert ins["meta"]["container"] == container_name and ins["sizes"]["checkpoint"] > 0
    assert any(m.startswith("/ ") for m in ins["mounts"])


def test_import_no_start_leaves_the_checkpoint_ready(
    migrate_on_a: Any,
    run_on_b: Any,
    container_name: str,
    other_names: list[str],
    docker_a: Any,
    docker_b: Any,
    counter_image: str,  # noqa: F811 - the fixture from test_run
    tmp_path: Path,
) -> None:
    # A counter that also logs: the log travels in the bundle (container.log).
    docker_a.containers.run(
        counter_image,
        ["sh", "-c", f"echo logged-on-a; {COUNTER}"],
        name=container_name,
        detach=True,
    )
    _counting(docker_a, container_name)  # as before: on with the test even when it did not
    path = tmp_path / "c.tar.zst"
    p = migrate_on_a("export", container_name, "-o", str(path), "--leave-running")
    assert p.returncode == 0, p.stderr
    at_export = _count(docker_a, container_name)
    p = migrate_on_a("inspect", str(path), "--json")
    assert json.loads(p.stdout)["sizes"]["container.log"] > 0
    name = other_names[0]
    p = run_on_b(
        [str(migrate_executable()), "import", str(path), "--name", name, "--no-start", "--json"]
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["status"] == "created" and res["checkpoint"]
    c = docker_b.containers.get(name)
    assert c.status == "created"
    root = Path(docker_b.info()["DockerRootDir"])
    cp_dir = root / "containers" / c.id / "checkpoints" / res["checkpoint"]
    assert (cp_dir / "inventory.img").is_file(), "the CRIU images are not in place"
    # What the output tells the user to run restores it, with its memory.
    p = run_on_b(["/usr/bin/docker", "start", "--checkpoint", res["checkpoint"], name])
    assert p.returncode == 0, p.stderr
    assert docker_b.containers.get(name).status == "running"
    after = _count(docker_b, name)
    assert 20 <= after <= at_export + 5, "the counter restarted instead of continuing"
    # `docker logs` on B shows what the container logged on A before the export, once.
    logs = docker_b.containers.get(name).logs().decode()
    assert logs.count("logged-on-a") == 1, logs


def test_named_volume_travels_in_the_bundle(
    migrate_on_a: Any,
    run_on_b: Any,
    container_name: str,
    other_names: list[str],
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    vol = f"mt-vol-{uuid.uuid4().hex[:10]}"
    script = (
        "echo hello > /data/hello; mkdir -p /data/sub; ln -s ../hello /data/sub/link; "
        "i=0; while true; do i=$((i+1)); echo $i > /data/count.new; mv /data/count.new "
        "/data/count; sleep 0.1; done"
    )
    try:
        docker_a.containers.run(
            test_image,
            ["sh", "-c", script],
            name=container_name,
            detach=True,
            volumes={vol: {"bind": "/data", "mode": "rw"}},
        )
        time.sleep(1.5)
        path = tmp_path / "v.tar.zst"
        p = migrate_on_a("export", container_name, "-o", str(path), "--leave-running")
        assert p.returncode == 0, p.stderr
        p = migrate_on_a("inspect", str(path), "--json")
        ins = json.loads(p.stdout)
        assert ins["sizes"]["volumes"] > 0
        assert [v["name"] for v in ins["meta"]["volumes"]] == [vol]
        exe = str(migrate_executable())
        p = run_on_b([exe, "import", str(path), "--name", other_names[0], "--json"])
        assert p.returncode == 0, p.stderr
        c = docker_b.containers.get(other_names[0])
        assert c.status == "running"
        assert [m["Name"] for m in c.attrs["Mounts"]] == [vol]
        assert c.exec_run(["cat", "/data/hello"]).output == b"hello\n"
        assert c.exec_run(["cat", "/data/sub/link"]).output == b"hello\n"
        # The file in the volume and the shell's memory were captured at the same instant:
        # the restored loop goes on from the value it last wrote.
        n = int(c.exec_run(["cat", "/data/count"]).output)
        time.sleep(0.5)
        assert int(c.exec_run(["cat", "/data/count"]).output) > n >= 10
        # A second import would merge into that volume: refused before anything is created.
        p = run_on_b([exe, "import", str(path), "--name", other_names[1]])
        assert p.returncode == 3, p.stderr
        assert "precheck.name_conflict" in p.stderr and vol in p.stderr
        assert not docker_b.containers.list(all=True, filters={"name": other_names[1]})
    finally:
        for client, names in ((docker_a, [container_name]), (docker_b, other_names)):
            for n in names:
                for ctr in client.containers.list(all=True, filters={"name": n}):
                    ctr.remove(force=True)
            for v in client.volumes.list(filters={"name": vol}):
                v.remove(force=True)
