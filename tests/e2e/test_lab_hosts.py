"""The lab itself, end to end: two hosts that reach each other over real SSH, an idempotent
`up` that repairs leftovers, and a clean `down`.

The up/down cycle runs on a second lab (its own name, subnet and namespaces) so the session's
lab, which other tests use, is never disturbed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migrate.core.errors import LabError
from migrate.lab.config import LabConfig, migrate_executable
from migrate.lab.hosts import Lab
from migrate.lab.system import NETNS_DIR, pid_alive

RunFn = Callable[..., "subprocess.CompletedProcess[str]"]
CYCLE_LAB = os.environ.get("MIGRATE_TEST_LAB2", "mtest2")
CYCLE_SUBNET = os.environ.get("MIGRATE_TEST_LAB2_SUBNET", "10.213.9.0/24")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(migrate_executable()), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        k, _, v = words[1].partition("=")
        env[k] = v
    return env


def mounts_under(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [ln.split()[4] for ln in text.splitlines() if ln.split()[4].startswith(f"{path}/")]


def test_ssh_from_a_to_b_reaches_bs_experimental_docker(lab: Lab, run_on_a: RunFn) -> None:
    r = run_on_a(lab.ssh_argv("b", "docker", "info"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Experimental: true" in r.stdout
    # The daemon answering is B's own: its DOCKER_HOST came from B's sshd (SetEnv).
    r = run_on_a(
        lab.ssh_argv(
            "b",
            "echo $DOCKER_HOST; /usr/bin/docker info --format "
            "'{{.ExperimentalBuild}} {{.DockerRootDir}}'",
        )
    )
    assert r.returncode == 0, r.stderr
    dh, info = r.stdout.splitlines()
    assert dh == lab.host("b").docker_host
    assert info == f"true {lab.config.paths('b').data_root}"


def test_strict_host_key_checking_refuses_a_wrong_key(
    lab: Lab, run_on_a: RunFn, tmp_path: Path
) -> None:
    wrong = tmp_path / "known_hosts"
    a_key = lab.config.paths("a").host_key.with_suffix(".pub").read_text().split()
    wrong.write_text(f"{lab.host('b').addr} {a_key[0]} {a_key[1]}\n")  # A's key under B's name
    argv = [
        a if a != f"UserKnownHostsFile={lab.config.known_hosts}" else f"UserKnownHostsFile={wrong}"
        for a in lab.ssh_argv("b", "true")
    ]
    r = run_on_a(argv, timeout=60)
    assert r.returncode == 255
    assert "host key" in r.stderr.lower()


def test_root_namespace_reaches_both_hosts(lab: Lab) -> None:
    for h in ("a", "b"):
        argv = lab.ssh_argv(h, "echo $MIGRATE_LAB_HOST")
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == h


def test_env_command_matches_api(lab: Lab, lab_env: dict[str, str]) -> None:
    out = cli("lab", "env", "--name", lab.config.name).stdout
    env = parse_exports(out)
    assert env == lab_env
    assert env["MIGRATE_LAB_A_NETNS"] == lab.config.netns("a")
    assert env["MIGRATE_AGENT_COMMAND"].endswith("/migrate agent")
    assert Path(env["MIGRATE_AGENT_COMMAND"].split()[0]).is_file()
    for h in ("A", "B"):
        assert (NETNS_DIR / env[f"MIGRATE_LAB_{h}_NETNS"]).exists()
        assert Path(env[f"MIGRATE_LAB_{h}_DOCKER_HOST"].removeprefix("unix://")).is_socket()


def test_a_second_lab_on_the_same_subnet_is_refused(lab: Lab) -> None:
    clash = Lab(LabConfig(name="mtestx", subnet=lab.config.subnet))
    try:
        with pytest.raises(LabError, match="overlaps"):
            clash.up()
        assert not (NETNS_DIR / "mtestx-a").exists()
    finally:
        clash.config.lock_file.unlink(missing_ok=True)


@pytest.fixture
def cycle_lab() -> Iterator[Lab]:
    lab = Lab(LabConfig(name=CYCLE_LAB, subnet=CYCLE_SUBNET))
    lab.down(purge=True)  # whatever an interrupted earlier run left
    yield lab
    lab.down(purge=True)


def test_up_twice_repair_down_up(cycle_lab: Lab, lab: Lab) -> None:
    name, subnet = cycle_lab.config.name, cycle_lab.config.subnet

    # up, then up again: the second reuses the same healthy daemons
    first = cli("lab", "up", "--name", name, "--subnet", subnet)
    assert name in first.stdout
    st1 = cycle_lab.status()
    assert st1.healthy
    assert all(h.mntns_present and h.local_bound for h in st1.hosts)
    cli("lab", "up", "--name", name)  # the subnet is remembered
    st2 = cycle_lab.status()
    assert st2.healthy
    assert [(h.dockerd.pid, h.sshd.pid) for h in st2.hosts] == [
        (h.dockerd.pid, h.sshd.pid) for h in st1.hosts
    ]
    assert cli("lab", "status", "--name", name).returncode == 0

    # across the lab over real SSH, from A's namespace: B's daemon, experimental
    r = cycle_lab.host("a").run(cycle_lab.ssh_argv("b", "docker", "info"), check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Experimental: true" in r.stdout

    # leftovers: a dockerd and an sshd that died; up repairs them
    b_dockerd, a_sshd = st2.hosts[1].dockerd.pid, st2.hosts[0].sshd.pid
    assert b_dockerd and a_sshd
    os.kill(b_dockerd, signal.SIGKILL)
    os.kill(a_sshd, signal.SIGKILL)
    assert cli("lab", "status", "--name", name, check=False).returncode != 0
    st3 = cycle_lab.up()
    assert st3.healthy
    assert st3.hosts[1].dockerd.pid != b_dockerd

    # a lost mount namespace handle (as after a reboot: the run dir stays, the namespace
    # does not): up makes a new namespace and moves A's daemons into it
    a_handle = cycle_lab.config.paths("a").mntns
    subprocess.run(["umount", str(a_handle)], check=True)
    assert not cycle_lab.status().healthy
    a_daemons = (st3.hosts[0].dockerd.pid, st3.hosts[0].sshd.pid)
    b_daemons = (st3.hosts[1].dockerd.pid, st3.hosts[1].sshd.pid)
    st3 = cycle_lab.up()
    assert st3.healthy
    assert st3.hosts[0].dockerd.pid not in a_daemons and st3.hosts[0].sshd.pid not in a_daemons
    assert (st3.hosts[1].dockerd.pid, st3.hosts[1].sshd.pid) == b_daemons

    # down: nothing left (namespaces, links, mounts, daemons)
    cli("lab", "down", "--name", name)
    st4 = cycle_lab.status()
    assert st4.down
    assert cli("lab", "status", "--name", name, check=False).returncode == 1
    assert not (NETNS_DIR / cycle_lab.config.netns("a")).exists()
    link = ["ip", "link", "show", cycle_lab.config.root_iface("a")]
    assert subprocess.run(link, check=False, capture_output=True).returncode != 0
    assert not mounts_under(cycle_lab.config.state_dir)
    assert not mounts_under(cycle_lab.config.run_dir)
    for h in st3.hosts:
        for pid in (h.dockerd.pid, h.sshd.pid):
            assert pid is not None and not pid_alive(pid)

    # and up again, with the same keys: known_hosts still matches
    kh = cycle_lab.config.known_hosts.read_text()
    assert cycle_lab.up().healthy
    assert cycle_lab.config.known_hosts.read_text() == kh

    # the session's lab was not disturbed
    assert lab.status().healthy
