"""`migrate run` between the two lab hosts over real SSH (issue: live migration)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import AB, AGENT_FAULTS_ON

from migrate.lab.config import migrate_executable

COUNTER = (
    "echo new > /created; echo changed >> /etc/motd; rm /etc/deleteme; "
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
    "sleep 0.1; done"
)


@pytest.fixture(params=["ssh", "local"])
def transport_args(
    request: Any, lab: Any, lab_env: dict[str, str], migrate_args: list[str]
) -> list[str]:
    """The `--to ...` options for each transport: SSH to B, or `local://` with the agent as a
    subprocess on pipes, started in B's network and mount namespaces against B's daemon
    (B's mount namespace through B's dockerd: the handle under the run dir is not visible
    from inside A's namespace, where the source runs)."""
    if request.param == "ssh":
        return migrate_args
    netns = lab_env["MIGRATE_LAB_B_NETNS"]
    mntns = f"/proc/{lab.status().hosts[1].dockerd.pid}/ns/mnt"
    return [
        "--to",
        "local://",
        "--agent-command",
        f"{AGENT_FAULTS_ON} nsenter --net=/run/netns/{netns} --mount={mntns} "
        f"{migrate_executable()} agent",
        "--dest-docker-host",
        lab.host("b").docker_host,
    ]


def _count(client: Any, name: str) -> int:
    out = client.containers.get(name).exec_run(["cat", "/tmp/count"]).output
    return int(out.decode().strip() or 0)


@pytest.fixture
def counter_image(lab: Any, test_image: str) -> str:
    from migrate.lab.images import build_image

    tag = "migrate-test/counter:1"
    build_image(
        lab.host("a").docker_host,
        tag,
        base=test_image,
        files={"/etc/deleteme": b"gone soon\n", "/etc/motd": b"hello\n"},
    )
    return tag


def _counting(client: Any, name: str) -> bool:
    """Whether COUNTER in ``name`` counts to 20 within 20 s (the file is not there at first)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _count(client, name) >= 20:
                return True
        except (ValueError, Exception):  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.2)
    return False


def _start_counter(docker_a: Any, name: str, image: str) -> None:
    docker_a.containers.run(
        image,
        ["sh", "-c", COUNTER],
        name=name,
        detach=True,
        environment={"SECRET": "s3"},
        labels={"app": "counter"},
    )
    if not _counting(docker_a, name):
        raise AssertionError("counter did not start")


def test_counter_and_files_resume_on_b(
    migrate_on_a: Any,
    transport_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    counter_image: str,
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    before = _count(docker_a, container_name)
    p = migrate_on_a("run", container_name, *transport_args, "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["status"] == "migrated"
    assert rep["downtime_s"] > 0 and rep["bytes"]["checkpoint"] > 0
    c = docker_b.containers.get(container_name)
    assert c.status == "running"
    after = _count(docker_b, container_name)
    assert after >= before, "the counter restarted instead of continuing"
    time.sleep(0.5)
    assert _count(docker_b, container_name) > after, "the counter stopped"
    assert c.exec_run(["cat", "/created"]).output == b"new\n"
    assert c.exec_run(["cat", "/etc/motd"]).output == b"hello\nchanged\n"
    assert c.exec_run(["ls", "/etc/deleteme"]).exit_code != 0
    assert "SECRET=s3" in c.attrs["Config"]["Env"]
    assert c.attrs["Config"]["Labels"]["app"] == "counter"
    assert not docker_a.containers.list(all=True, filters={"name": container_name})


def test_missing_container_is_refused(migrate_on_a: Any, migrate_args: list[str]) -> None:
    p = migrate_on_a("run", "no-such-container-xyz", *migrate_args)
    assert p.returncode == 3
    assert "no container" in p.stderr


def test_unknown_host_key_is_refused(
    ab: AB,
    tmp_path: Any,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    args = list(ab.migrate_args)
    args[args.index("--known-hosts") + 1] = str(kh)
    p = ab.migrate_on_a("run", ab.container_name, *args)
    assert p.returncode == 3, p.stderr
    assert "SHA256:" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"


@pytest.mark.parametrize("fault", ["agent:restore_fail", "agent:exit_mid_stream"])
def test_fault_rolls_back(
    fault: str,
    migrate_on_a: Any,
    transport_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    counter_image: str,
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    before = _count(docker_a, container_name)
    p = migrate_on_a("run", container_name, *transport_args, env_extra={"MIGRATE_FAULTS": fault})
    assert p.returncode == 1, p.stderr
    assert "Rolled back" in p.stderr
    if fault == "agent:restore_fail":
        assert "CRIU log" in p.stderr
    c = docker_a.containers.get(container_name)
    assert c.status == "running"
    time.sleep(0.5)
    assert _count(docker_a, container_name) > before
    assert not docker_b.containers.list(all=True, filters={"name": container_name})


def test_tcp_server_answers_on_b(
    ab: AB,
    run_on_b: Any,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image,
        [
            "sh",
            "-c",
            "mkdir -p /www; echo served-from-memory > /www/index.html; exec httpd -f -p 80 -h /www",
        ],
        name=ab.container_name,
        detach=True,
    )
    time.sleep(1)
    p = ab.run()
    assert p.returncode == 0, p.stderr
    c = ab.docker_b.containers.get(ab.container_name)
    ip = c.attrs["NetworkSettings"]["IPAddress"]
    assert ip
    r = run_on_b(["busybox", "wget", "-qO-", f"http://{ip}/"], timeout=30)
    assert r.stdout.strip() == "served-from-memory", r.stderr


def test_demo_runs_twice(lab: Any) -> None:
    import subprocess

    from migrate.lab.config import migrate_executable

    for _ in range(2):
        p = subprocess.run(
            [str(migrate_executable()), "demo", "--name", lab.config.name],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert p.returncode == 0, p.stderr + p.stdout
        assert "kept counting" in p.stdout


def test_image_sent_only_when_missing(
    lab: Any,
    ab: AB,
) -> None:
    from migrate.lab.images import build_image, remove_image

    tag = "migrate-test/only-on-a:1"
    build_image(lab.host("a").docker_host, tag, base=ab.test_image, files={"/marker": b"x" * 4096})
    remove_image(lab.host("b").docker_host, tag)
    ab.docker_a.containers.run(tag, ["sleep", "1000"], name=ab.container_name, detach=True)
    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    sent = json.loads(p.stdout)["bytes"]["image"]
    assert sent > 0  # absent on B: transferred
    # ...but only the layer B lacks: its busybox base layer (~2 MB) stays home.
    assert sent < 500_000, sent
    assert (
        ab.docker_b.containers.get(ab.container_name).exec_run(["cat", "/marker"]).output
        == b"x" * 4096
    )
    ab.docker_b.containers.get(ab.container_name).remove(force=True)
    ab.docker_a.containers.run(tag, ["sleep", "1000"], name=ab.container_name, detach=True)
    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["bytes"]["image"] == 0  # present on B: not sent


def test_config_survives_under_a_new_name(
    lab: Any,
    ab: AB,
) -> None:
    new = ab.container_name + "-moved"
    ab.docker_a.containers.run(
        ab.test_image,
        ["sleep 1000"],
        entrypoint=["sh", "-c"],
        name=ab.container_name,
        detach=True,
        environment={"A": "1"},
        labels={"tier": "web"},
        working_dir="/tmp",
        user="0:0",
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
        ports={"80/tcp": 18080},
        mem_limit="64m",
        nano_cpus=500_000_000,
    )
    want = ab.docker_a.containers.get(ab.container_name).attrs
    try:
        p = ab.run("--name", new)
        assert p.returncode == 0, p.stderr
        got = ab.docker_b.containers.get(new).attrs
        for key in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "Hostname"):
            assert got["Config"][key] == want["Config"][key], key
        for key in ("RestartPolicy", "NetworkMode", "PortBindings", "Memory", "NanoCpus"):
            assert got["HostConfig"][key] == want["HostConfig"][key], key
        assert got["State"]["Running"]
    finally:
        for client in (ab.docker_a, ab.docker_b):
            for c in client.containers.list(all=True, filters={"name": new}):
                c.remove(force=True)


def test_name_taken_on_b_rolls_back(
    ab: AB,
    counter_image: str,
) -> None:
    _start_counter(ab.docker_a, ab.container_name, counter_image)
    ab.docker_b.containers.create(ab.test_image, ["true"], name=ab.container_name)
    p = ab.run()
    assert p.returncode == 3, p.stderr  # the precheck sees it: nothing touched
    # Taken after the precheck (a race): docker create on B refuses, the source rolls back.
    p = ab.run(
        env_extra={"MIGRATE_FAULTS": "agent:skip_name_check"},
    )
    assert p.returncode == 1, p.stderr
    assert "already exists" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert (
        ab.docker_b.containers.get(ab.container_name).status == "created"
    )  # the other one, untouched


def test_older_criu_on_destination_is_refused(
    ab: AB,
    tmp_path: Any,
) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 4.1.0'\n")
    fake.chmod(0o755)
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    args = list(ab.migrate_args)
    i = args.index("--agent-command") + 1
    args[i] = f"env MIGRATE_CRIU={fake} {args[i]}"
    p = ab.migrate_on_a("run", ab.container_name, *args)
    assert p.returncode == 3, p.stderr
    assert "older" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"


def test_unreachable_destination_is_refused(
    lab_env: dict[str, str],
    ab: AB,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    args = list(ab.migrate_args)
    args[args.index("--to") + 1] = f"ssh://root@{lab_env['MIGRATE_LAB_B_ADDR']}:2999"
    p = ab.migrate_on_a("run", ab.container_name, *args)
    assert p.returncode == 3, p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
