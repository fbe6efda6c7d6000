"""Lab configuration, addressing, generated files and parsing: pure, no root, no daemons."""

from __future__ import annotations

import json
import shlex
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from migrate.core.errors import UsageError
from migrate.core.mountinfo import parse_mountinfo, parse_mountinfo_entries
from migrate.lab import config as lab_config
from migrate.lab.config import (
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    LabConfig,
    dockerd_argv,
    lab_env,
    resolve_config,
    shell_exports,
    sshd_argv,
    sshd_config_text,
    to_args,
    validate_name,
    validate_subnet,
)
from migrate.lab.hosts import Lab
from migrate.lab.system import is_under


def test_defaults() -> None:
    c = LabConfig()
    assert (c.name, c.subnet) == (DEFAULT_NAME, DEFAULT_SUBNET) == ("mlab", "10.213.7.0/24")
    assert c.state_dir == Path("/var/lib/migrate-lab/mlab")
    assert c.run_dir == Path("/run/migrate-lab/mlab")
    assert (c.netns("a"), c.netns("b")) == ("mlab-a", "mlab-b")
    assert (c.addr("a"), c.addr("b"), c.root_addr) == ("10.213.7.1", "10.213.7.2", "10.213.7.254")
    assert c.docker_host("a") == "unix:///run/migrate-lab/mlab/a/docker.sock"
    assert c.client_key == Path("/var/lib/migrate-lab/mlab/ssh/id_ed25519")
    assert c.known_hosts == Path("/var/lib/migrate-lab/mlab/ssh/known_hosts")
    assert c.lock_file == Path("/var/lib/migrate-lab/mlab.lock")


def test_addresses_follow_the_subnet() -> None:
    c = LabConfig(name="t", subnet="10.99.0.8/29")
    assert (c.addr("a"), c.addr("b"), c.root_addr) == ("10.99.0.9", "10.99.0.10", "10.99.0.14")
    c = LabConfig(name="t", subnet="10.99.0.0/16")
    assert (c.addr("a"), c.root_addr) == ("10.99.0.1", "10.99.255.254")


def test_paths_are_per_lab_and_per_host() -> None:
    a, b = LabConfig(name="one", subnet="10.1.1.0/24"), LabConfig(name="two", subnet="10.1.2.0/24")
    pa, pb = a.paths("a"), b.paths("a")
    assert pa.data_root != pb.data_root and pa.socket != pb.socket
    assert a.paths("a").exec_root != a.paths("b").exec_root
    assert {a.netns("a"), a.netns("b")}.isdisjoint({b.netns("a"), b.netns("b")})


@pytest.mark.parametrize("name", ["", "A", "1lab", "lab-x", "lab_x", "abcdefghijklm", "la b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)


def test_longest_name_fits_an_interface_name() -> None:
    name = "a" * 12
    assert validate_name(name) == name
    assert len(LabConfig(name=name).root_iface("b")) <= 15


@pytest.mark.parametrize(
    "subnet",
    [
        "10.213.7.1/24",  # host bits set
        "10.213.7.0/30",  # too small
        "10.0.0.0/8",  # too large
        "8.8.8.0/24",  # public
        "127.1.0.0/24",  # loopback
        "169.254.7.0/24",  # link local
        "172.17.5.0/24",  # Docker's default bridge inside each host
        "192.168.7.0/24",  # Docker's address pools
        "fd00::/64",
        "not-a-net",
    ],
)
def test_bad_subnets_are_refused(subnet: str) -> None:
    with pytest.raises(UsageError):
        validate_subnet(subnet)


def test_host_names_are_checked() -> None:
    with pytest.raises(UsageError):
        LabConfig().addr("c")
    with pytest.raises(UsageError):
        Lab().host("c")


def test_relative_and_long_dirs_are_refused() -> None:
    with pytest.raises(UsageError):
        LabConfig(state_dir=Path("rel/dir"))
    with pytest.raises(UsageError):
        LabConfig(run_dir=Path("/run/" + "x" * 80))


def test_env_names_and_values() -> None:
    c = LabConfig(name="t", subnet="10.50.0.0/24", state_dir=Path("/s"), run_dir=Path("/r"))
    env = lab_env(c)
    assert env["MIGRATE_LAB_A_ADDR"] == "10.50.0.1"
    assert env["MIGRATE_LAB_B_ADDR"] == "10.50.0.2"
    assert env["MIGRATE_LAB_A_DOCKER_HOST"] == "unix:///r/a/docker.sock"
    assert env["MIGRATE_LAB_B_DOCKER_HOST"] == "unix:///r/b/docker.sock"
    assert env["MIGRATE_LAB_A_NETNS"] == "t-a"
    assert env["MIGRATE_LAB_B_NETNS"] == "t-b"
    assert env["MIGRATE_LAB_B_URL"] == "ssh://root@10.50.0.2"
    assert env["MIGRATE_LAB_KEY"] == "/s/ssh/id_ed25519"
    assert env["MIGRATE_LAB_KNOWN_HOSTS"] == "/s/ssh/known_hosts"
    assert env["MIGRATE_LAB_A_MNTNS"] == "/r/mntns/a"
    assert env["MIGRATE_LAB_B_MNTNS"] == "/r/mntns/b"
    assert env["MIGRATE_LAB_LOCAL_DIR"] == "/srv/migrate-lab-local"
    exe, sub = env["MIGRATE_AGENT_COMMAND"].rsplit(" ", 1)
    assert sub == "agent" and Path(exe).is_absolute() and Path(exe).name == "migrate"


def test_to_args_point_at_a_host_with_the_lab_key_and_agent() -> None:
    c = LabConfig(name="t", subnet="10.50.0.0/24", state_dir=Path("/s"), run_dir=Path("/r"))
    env = lab_env(c)
    key = ["--identity", "/s/ssh/id_ed25519", "--known-hosts", "/s/ssh/known_hosts"]
    agent = env["MIGRATE_AGENT_COMMAND"]
    assert to_args(env) == ["--to", "ssh://root@10.50.0.2", *key, "--agent-command", agent]
    assert to_args(env, "a", "x agent") == [
        "--to",
        "ssh://root@10.50.0.1",
        *key,
        "--agent-command",
        "x agent",
    ]


def test_shell_exports_round_trip() -> None:
    env = {"A": "plain", "B": "/path with space/migrate agent", "C": "it's $HOME"}
    text = shell_exports(env)
    parsed = {}
    for line in text.splitlines():
        export, assignment = shlex.split(line)
        assert export == "export"
        k, _, v = assignment.partition("=")
        parsed[k] = v
    assert parsed == env


def test_dockerd_and_sshd_argv() -> None:
    c = LabConfig()
    argv = dockerd_argv(c, "a")
    assert argv[0] == "/usr/sbin/dockerd"
    assert "--experimental" in argv
    for flag in ("--data-root", "--exec-root", "-H", "--pidfile", "--config-file"):
        assert flag in argv
    assert argv[argv.index("-H") + 1] == c.docker_host("a")
    assert sshd_argv(c, "b")[:2] == ["/usr/sbin/sshd", "-D"]
    assert "--live-restore" not in argv
    assert dockerd_argv(LabConfig(live_restore=True), "a") == [*argv, "--live-restore"]


def test_host_argv_uses_nsenter_not_ip_netns_exec() -> None:
    h = Lab(LabConfig(name="t", subnet="10.50.0.0/24")).host("a")
    argv = h.argv(["docker", "ps"])
    assert argv == [
        "/usr/bin/nsenter",
        "--net=/run/netns/t-a",
        "--mount=/run/migrate-lab/t/mntns/a",
        "--wd=.",
        "--",
        "docker",
        "ps",
    ]
    assert h.environ()["DOCKER_HOST"] == "unix:///run/migrate-lab/t/a/docker.sock"
    assert h.url == "ssh://root@10.50.0.1"


def test_sshd_config() -> None:
    c = LabConfig()
    text = sshd_config_text(c, "b")
    lines = set(text.splitlines())
    assert "ListenAddress 10.213.7.2" in lines
    assert "Port 22" in lines
    assert "PasswordAuthentication no" in lines
    assert "PermitRootLogin prohibit-password" in lines
    assert f"PidFile {c.paths('b').sshd_pidfile}" in lines
    setenv = next(ln for ln in lines if ln.startswith("SetEnv "))
    assert f"DOCKER_HOST={c.docker_host('b')}" in setenv.split()


def test_ssh_argv_is_strict() -> None:
    lab = Lab()
    argv = lab.ssh_argv("b", "docker", "info")
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={lab.config.known_hosts}" in argv
    assert argv[-3:] == ["root@10.213.7.2", "docker", "info"]


def test_resolve_config_remembers_the_saved_subnet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_config, "NETNS_DIR", tmp_path / "netns")
    state = tmp_path / "state"
    state.mkdir()
    assert resolve_config("t", state_dir=state).subnet == DEFAULT_SUBNET
    (state / "lab.json").write_text(json.dumps({"name": "t", "subnet": "10.9.9.0/24"}))
    assert resolve_config("t", state_dir=state).subnet == "10.9.9.0/24"
    # a different subnet is fine while the lab is down...
    assert resolve_config("t", "10.9.8.0/24", state_dir=state).subnet == "10.9.8.0/24"
    # ...and refused while its namespaces exist
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns" / "t-a").touch()
    with pytest.raises(UsageError, match="is up with subnet"):
        resolve_config("t", "10.9.8.0/24", state_dir=state)


def test_resolve_config_ignores_a_corrupt_saved_file(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text("{not json")
    assert resolve_config("t", state_dir=tmp_path).subnet == DEFAULT_SUBNET


def test_parse_mountinfo_decodes_escapes() -> None:
    text = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
        "90 22 0:50 / /var/lib/x/with\\040space rw - overlay overlay rw\n"
        "91 22 0:4 net:[4026532] /run/netns/t-a rw shared:5 - nsfs nsfs rw\n"
    )
    assert parse_mountinfo(text) == ["/", "/var/lib/x/with space", "/run/netns/t-a"]


def test_parse_mountinfo_entries_tell_a_mount_namespace_handle() -> None:
    text = (
        "83 27 254:0 /run/l/mntns /run/l/mntns rw,relatime - ext4 /dev/vda rw\n"
        "167 83 0:4 mnt:[4026532839] /run/l/mntns/a rw - nsfs nsfs rw\n"
        "91 22 0:4 net:[4026532] /run/netns/t-a rw shared:5 - nsfs nsfs rw\n"
        "92 22 0:50 / /x\\040y rw master:3 - tmpfs tmpfs rw\n"
    )
    assert parse_mountinfo_entries(text) == [
        ("/run/l/mntns", "/run/l/mntns", "ext4"),
        ("/run/l/mntns/a", "mnt:[4026532839]", "nsfs"),
        ("/run/netns/t-a", "net:[4026532]", "nsfs"),
        ("/x y", "/", "tmpfs"),
    ]


def test_host_paths_keep_the_local_dir_and_the_mntns_handle_per_host() -> None:
    c = LabConfig(name="t", subnet="10.50.0.0/24", state_dir=Path("/s"), run_dir=Path("/r"))
    assert (c.paths("a").local, c.paths("b").local) == (Path("/s/a/local"), Path("/s/b/local"))
    assert (c.paths("a").mntns, c.paths("b").mntns) == (Path("/r/mntns/a"), Path("/r/mntns/b"))
    assert c.mntns_dir == Path("/r/mntns")


def test_is_under() -> None:
    roots = [Path("/var/lib/migrate-lab/t")]
    assert is_under("/var/lib/migrate-lab/t", roots)
    assert is_under("/var/lib/migrate-lab/t/a/docker/overlay2/x/merged", roots)
    assert not is_under("/var/lib/migrate-lab/t2/a", roots)


def test_busybox_rootfs_is_deterministic() -> None:
    from migrate.lab.images import BUSYBOX, busybox_rootfs_tar

    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (make setup)")
    one, two = busybox_rootfs_tar(), busybox_rootfs_tar()
    assert one == two
    with tarfile.open(fileobj=BytesIO(one)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["tmp"].mode == 0o1777
    for d in ("etc", "root", "var/www", "proc", "sys", "dev"):
        assert members[d].isdir()
    assert {m.uid for m in members.values()} == {0}
