"""Lab configuration: names, addresses, paths and the files and command lines derived from
them. Pure: nothing here touches the system (the unit tests cover it without root).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import migrate
from migrate.core.errors import UsageError
from migrate.lab.system import NETNS_DIR

DEFAULT_NAME = "mlab"
DEFAULT_SUBNET = "10.213.7.0/24"
DEFAULT_STATE_ROOT = Path("/var/lib/migrate-lab")
DEFAULT_RUN_ROOT = Path("/run/migrate-lab")
HOSTS = ("a", "b")
# Interface names are at most 15 bytes and the root-side links are named "<lab>-<host>".
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
# The exec root holds containerd's socket: keep it well under the 108-byte sun_path limit.
MAX_RUN_DIR_LEN = 60
SUBNET_PREFIX_RANGE = (16, 29)
# Docker's default bridge and address pools inside each host: the lab subnet must not overlap.
DOCKER_POOLS = (ipaddress.ip_network("172.16.0.0/12"), ipaddress.ip_network("192.168.0.0/16"))
SSH_PORT = 22
# The host-local directory: the same path on both hosts, with different content (each host's
# mount namespace binds its own STATE/<host>/local there), so a path that exists "on A" can be
# missing or different "on B" as on two real machines (--bind-mounts copy, same-path).
LOCAL_DIR = Path("/srv/migrate-lab-local")
DOCKERD = Path("/usr/sbin/dockerd")
SSHD = Path("/usr/sbin/sshd")


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"bad lab name {name!r}",
            hint="use 1-12 lowercase letters and digits, starting with a letter (e.g. mlab)",
        )
    return name


def validate_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise UsageError(f"bad lab subnet {subnet!r}: {e}", hint="e.g. 10.213.7.0/24") from e
    if not isinstance(net, ipaddress.IPv4Network):
        raise UsageError(f"lab subnet {subnet} is not IPv4", hint="e.g. 10.213.7.0/24")
    lo, hi = SUBNET_PREFIX_RANGE
    if not lo <= net.prefixlen <= hi:
        raise UsageError(
            f"lab subnet {subnet} must have a prefix length between /{lo} and /{hi}",
            hint="e.g. 10.213.7.0/24",
        )
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise UsageError(
            f"lab subnet {subnet} is not a private network",
            hint="the lab may only use private addresses, e.g. 10.213.7.0/24",
        )
    for pool in DOCKER_POOLS:
        if net.overlaps(pool):
            raise UsageError(
                f"lab subnet {subnet} overlaps Docker's address pool {pool}",
                hint="pick a subnet in 10.0.0.0/8, e.g. 10.213.7.0/24",
            )
    return net


@dataclass(frozen=True)
class LabConfig:
    """Where a lab lives. Everything else (namespace names, addresses, paths) derives from it.

    Defaults: name ``mlab``; subnet ``10.213.7.0/24`` (host a .1, host b .2, root namespace
    .254: the first, second and last host addresses of the subnet); state dir
    ``/var/lib/migrate-lab/<name>`` (data roots, keys, logs; survives ``down`` unless purged);
    run dir ``/run/migrate-lab/<name>`` (sockets, pidfiles, exec roots). Namespaces are named
    ``<name>-a`` and ``<name>-b``; so are the root-side ends of the management links.
    """

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    state_dir: Path = field(default=Path())
    run_dir: Path = field(default=Path())
    # dockerd's --live-restore on both hosts: containers (restored ones included) outlive a
    # daemon restart. Off by default: the fault matrix's dockerd cells are measured without.
    live_restore: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name)
        net = validate_subnet(self.subnet)
        object.__setattr__(self, "subnet", str(net))
        if self.state_dir == Path():
            object.__setattr__(self, "state_dir", DEFAULT_STATE_ROOT / self.name)
        if self.run_dir == Path():
            object.__setattr__(self, "run_dir", DEFAULT_RUN_ROOT / self.name)
        for what, p in (("state dir", self.state_dir), ("run dir", self.run_dir)):
            if not p.is_absolute():
                raise UsageError(f"lab {what} {p} is not an absolute path")
        if len(str(self.run_dir)) > MAX_RUN_DIR_LEN:
            raise UsageError(
                f"lab run dir {self.run_dir} is too long (unix socket paths are limited)",
                hint=f"use a run dir of at most {MAX_RUN_DIR_LEN} characters",
            )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    def addr(self, host: str) -> str:
        """The host's lab address ("a": first host address, "b": second)."""
        return str(self.network.network_address + 1 + HOSTS.index(check_host(host)))

    @property
    def root_addr(self) -> str:
        """The root namespace's address on both management links (last host address)."""
        return str(self.network.broadcast_address - 1)

    def netns(self, host: str) -> str:
        return f"{self.name}-{check_host(host)}"

    def root_iface(self, host: str) -> str:
        return f"{self.name}-{check_host(host)}"

    def paths(self, host: str) -> HostPaths:
        h = check_host(host)
        st, rn = self.state_dir / h, self.run_dir / h
        return HostPaths(
            state=st,
            run=rn,
            data_root=st / "docker",
            exec_root=rn / "exec",
            socket=rn / "docker.sock",
            docker_pidfile=rn / "docker.pid",
            daemon_json=st / "daemon.json",
            dockerd_log=st / "dockerd.log",
            sshd_config=st / "sshd_config",
            sshd_pidfile=rn / "sshd.pid",
            sshd_log=st / "sshd.log",
            host_key=st / "ssh_host_ed25519_key",
            local=st / "local",
            mntns=self.mntns_dir / h,
        )

    @property
    def mntns_dir(self) -> Path:
        """Holds the hosts' mount namespace files; a private mount of its own, because a
        mount namespace can only be bind-mounted onto a mount that propagates nowhere."""
        return self.run_dir / "mntns"

    def docker_host(self, host: str) -> str:
        return f"unix://{self.paths(host).socket}"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def saved_config(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir.with_name(self.state_dir.name + ".lock")

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "state_dir": str(self.state_dir),
            "run_dir": str(self.run_dir),
        }


@dataclass(frozen=True)
class HostPaths:
    state: Path
    run: Path
    data_root: Path
    exec_root: Path
    socket: Path
    docker_pidfile: Path
    daemon_json: Path
    dockerd_log: Path
    sshd_config: Path
    sshd_pidfile: Path
    sshd_log: Path
    host_key: Path
    local: Path  # this host's content of LOCAL_DIR
    mntns: Path  # bind mount of the host's mount namespace (nsfs)

    @property
    def containerd_pidfile(self) -> Path:
        return self.exec_root / "containerd" / "containerd.pid"

    @property
    def containerd_socket(self) -> Path:
        return self.exec_root / "containerd" / "containerd.sock"

    @property
    def shim_dir(self) -> Path:
        return self.exec_root / "containerd" / "daemon" / "io.containerd.runtime.v2.task"


def check_host(host: str) -> str:
    """``host`` if it is a lab host name ("a" or "b"), else a UsageError."""
    if host not in HOSTS:
        raise UsageError(f"no lab host {host!r}", hint=f"lab hosts are {', '.join(HOSTS)}")
    return host


def resolve_config(
    name: str = DEFAULT_NAME,
    subnet: str | None = None,
    state_dir: Path | None = None,
    run_dir: Path | None = None,
) -> LabConfig:
    """The config for lab ``name``: what was given, else what its last ``up`` saved, else
    the defaults. A lab that is up keeps its subnet until it is brought down."""
    sdir = state_dir or DEFAULT_STATE_ROOT / validate_name(name)
    saved = load_saved(sdir / "lab.json")
    run = run_dir or (Path(saved["run_dir"]) if saved.get("run_dir") else None)
    cfg = LabConfig(
        name=name,
        subnet=subnet or saved.get("subnet") or DEFAULT_SUBNET,
        state_dir=sdir,
        run_dir=run or Path(),
    )
    old = saved.get("subnet")
    if (
        old
        and str(validate_subnet(old)) != cfg.subnet
        and any((NETNS_DIR / cfg.netns(h)).exists() for h in HOSTS)
    ):
        raise UsageError(
            f"lab {name} is up with subnet {old}, not {cfg.subnet}",
            hint=f"bring it down first: migrate lab down --name {name}",
        )
    return cfg


def load_saved(path: Path) -> dict[str, str]:
    """A saved lab.json, or {} when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def sshd_config_text(cfg: LabConfig, host: str) -> str:
    p = cfg.paths(host)
    return f"""\
# Generated by `migrate lab up` for lab {cfg.name}, host {host}.
ListenAddress {cfg.addr(host)}
Port {SSH_PORT}
HostKey {p.host_key}
PidFile {p.sshd_pidfile}
AuthorizedKeysFile {cfg.authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxSessions 64
# The agent's end of the keep-alives: a source that vanished (link cut, host died) is noticed
# within ~15 s, the session closes and the agent rolls back what it made.
ClientAliveInterval 3
ClientAliveCountMax 5
MaxStartups 100:30:200
SetEnv DOCKER_HOST={cfg.docker_host(host)} MIGRATE_LAB_NAME={cfg.name} MIGRATE_LAB_HOST={host}
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


def dockerd_argv(cfg: LabConfig, host: str) -> list[str]:
    p = cfg.paths(host)
    return [
        str(DOCKERD),
        "--experimental",
        "--config-file",
        str(p.daemon_json),
        "--data-root",
        str(p.data_root),
        "--exec-root",
        str(p.exec_root),
        "-H",
        f"unix://{p.socket}",
        "--pidfile",
        str(p.docker_pidfile),
        *(["--live-restore"] if cfg.live_restore else []),
    ]


def sshd_argv(cfg: LabConfig, host: str) -> list[str]:
    p = cfg.paths(host)
    return [str(SSHD), "-D", "-f", str(p.sshd_config), "-E", str(p.sshd_log)]


def migrate_executable() -> Path:
    """The ``migrate`` script of the running interpreter's environment (the project venv)."""
    beside = Path(sys.executable).parent / "migrate"
    if beside.exists():
        return beside
    found = shutil.which("migrate")
    return Path(found).absolute() if found else beside


def lab_env(cfg: LabConfig) -> dict[str, str]:
    """What a shell, a test or the demo needs to use the lab."""
    env = {
        "MIGRATE_LAB_NAME": cfg.name,
        "MIGRATE_LAB_SUBNET": cfg.subnet,
        "MIGRATE_LAB_ROOT_ADDR": cfg.root_addr,
        "MIGRATE_LAB_KEY": str(cfg.client_key),
        "MIGRATE_LAB_KNOWN_HOSTS": str(cfg.known_hosts),
        "MIGRATE_AGENT_COMMAND": f"{migrate_executable()} agent",
        "MIGRATE_LAB_LOCAL_DIR": str(LOCAL_DIR),
    }
    for h in HOSTS:
        u = h.upper()
        env[f"MIGRATE_LAB_{u}_ADDR"] = cfg.addr(h)
        env[f"MIGRATE_LAB_{u}_NETNS"] = cfg.netns(h)
        env[f"MIGRATE_LAB_{u}_MNTNS"] = str(cfg.paths(h).mntns)
        env[f"MIGRATE_LAB_{u}_DOCKER_HOST"] = cfg.docker_host(h)
        env[f"MIGRATE_LAB_{u}_URL"] = f"ssh://root@{cfg.addr(h)}"
    return env


def to_args(env: Mapping[str, str], dest: str = "b", agent_command: str = "") -> list[str]:
    """The options that point a ``migrate`` command at lab host ``dest``, from the variables
    of ``lab_env``: its URL, the lab's key and known_hosts, and ``agent_command`` (by default
    the lab's own)."""
    return [
        "--to",
        env[f"MIGRATE_LAB_{dest.upper()}_URL"],
        "--identity",
        env["MIGRATE_LAB_KEY"],
        "--known-hosts",
        env["MIGRATE_LAB_KNOWN_HOSTS"],
        "--agent-command",
        agent_command or env["MIGRATE_AGENT_COMMAND"],
    ]


def shell_exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def ansible_inventory(cfg: LabConfig) -> str:
    """An Ansible inventory (YAML) for the lab's two hosts, for ``playbooks/``.

    The lab hosts are network namespaces of this machine: they share its filesystem, so the
    project's own checkout and venv *are* their installation (``migrate_copy_source: false``;
    ``prepare.yml`` then verifies rather than copies). Everything else (SSH as root with the
    lab key, host keys checked against the lab's known_hosts, Docker reached through the
    ``DOCKER_HOST`` each lab sshd sets) is what a real fleet's inventory says too."""
    exe = migrate_executable()
    venv = exe.parent.parent
    # The checkout holding the migrate package (scripts/setup.sh, pyproject.toml beside it).
    project = Path(migrate.__file__).resolve().parent.parent
    ssh_args = (
        f"-o UserKnownHostsFile={cfg.known_hosts} -o StrictHostKeyChecking=yes "
        "-o IdentitiesOnly=yes -o ControlMaster=no"
    )

    def q(v: object) -> str:
        return json.dumps(str(v))  # a JSON string is a valid YAML scalar

    lines = [
        f"# Ansible inventory for the migrate sandbox lab {cfg.name!r} ({cfg.subnet}).",
        "# Generated by `migrate lab inventory`; see playbooks/README.md.",
        "all:",
        "  children:",
        "    migrate_hosts:",
        "      hosts:",
    ]
    for h in HOSTS:
        lines += [
            f"        {h}:",
            f"          ansible_host: {q(cfg.addr(h))}",
            f"          migrate_host_pubkey_file: {q(cfg.paths(h).host_key.with_suffix('.pub'))}",
        ]
    vars_ = {
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": cfg.client_key,
        "ansible_ssh_common_args": ssh_args,
        "migrate_source": project,
        "migrate_copy_source": "false",
        "migrate_home": project,
        "migrate_venv": venv,
        "migrate_extras": "test",
        "migrate_install_throttle": "1",
        "migrate_docker": "/usr/bin/docker",
        "migrate_key": cfg.client_key,
        "migrate_pubkey_file": cfg.client_key.with_suffix(".pub"),
        "migrate_authorized_keys": cfg.authorized_keys,
        "migrate_known_hosts": cfg.known_hosts,
    }
    lines.append("      vars:")
    for k, v in vars_.items():
        val = v if v in ("false", "1") else q(v)
        lines.append(f"        {k}: {val}")
    return "\n".join(lines) + "\n"
