"""A throwaway OpenSSH server on loopback, for tests and benchmarks.

Keys, config, pidfile and log all live in one directory; the server is stopped by its PID.
Needs root (sshd only runs commands as other users when it is root) and openssh-server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
# sshd refuses to start without its privilege separation directory.
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def sshd_available() -> str | None:
    """None when a loopback sshd can run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to run sshd"
    if not SSHD.exists():
        return "openssh-server is not installed"
    if not Path(SSH_KEYGEN).exists():
        return "ssh-keygen is not installed"
    return None


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A passphrase-less key pair at ``path`` / ``path.pub``."""
    subprocess.run(
        [
            SSH_KEYGEN,
            "-q",
            "-t",
            kind,
            "-N",
            "",
            "-C",
            f"migrate-test-{path.name}",
            "-f",
            str(path),
        ],
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    pid: int
    dir: Path
    host_key: Path  # private; .pub beside it
    client_key: Path  # authorized for root
    known_hosts: Path  # has the host key under [127.0.0.1]:PORT
    log: Path

    @property
    def url(self) -> str:
        return f"ssh://root@{self.host}:{self.port}"

    def host_key_line(self, name: str | None = None) -> str:
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{name or f'[{self.host}]:{self.port}'} {kind} {blob}\n"

    def ssh_argv(self, *extra: str) -> list[str]:
        """OpenSSH client argv for this server (strict host key checking, our key only)."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(self.port),
            *extra,
            f"root@{self.host}",
        ]


def _write_config(d: Path, port: int, host_key: Path, authorized: Path) -> Path:
    cfg = d / "sshd_config"
    cfg.write_text(
        f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxSessions 20
MaxStartups 100
LogLevel VERBOSE
"""
    )
    return cfg


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port} within {START_TIMEOUT_S} s")


def start_sshd(d: Path) -> tuple[Sshd, subprocess.Popen[bytes]]:
    """Start sshd in directory ``d`` on a free loopback port."""
    d.mkdir(parents=True, exist_ok=True)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key = keygen(d / "host_ed25519")
    client_key = keygen(d / "client_ed25519")
    authorized = d / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    last_error: Exception | None = None
    # The free port may be taken between probing and binding: try a few.
    for _ in range(5):
        port = free_port()
        cfg = _write_config(d, port, host_key, authorized)
        log = d / "sshd.log"
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
            )
        try:
            _wait_listening(proc, port, log)
        except RuntimeError as e:
            last_error = e
            stop_sshd(proc)
            continue
        known = d / "known_hosts"
        srv = Sshd("127.0.0.1", port, proc.pid, d, host_key, client_key, known, log)
        known.write_text(srv.host_key_line())
        return srv, proc
    raise RuntimeError(f"could not start sshd: {last_error}")


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    """Stop this sshd (by its PID) and the sessions it forked."""
    if proc.poll() is None:
        # -D keeps sshd in the foreground; per-connection children exit when it closes them.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_sshd(d: Path) -> Iterator[Sshd]:
    srv, proc = start_sshd(d)
    try:
        yield srv
    finally:
        stop_sshd(proc)
