"""OpenSSH known_hosts files: reading them (with @revoked), checking the destination's host
key against them, and recording a new key when the operator trusts it on first use."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from migrate.core.errors import HostKeyMismatch, HostKeyUnknown
from migrate.transport.destination import Destination, SshOptions

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
# Read (never written) when no --known-hosts is given, as OpenSSH does.
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


def key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` and OpenSSH's prompts show it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_label(key: paramiko.PKey) -> str:
    name = key.get_name()
    short = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(name)
    if short is None and name.startswith("ecdsa-"):
        short = "ECDSA"
    return f"{short or name} key {key_fingerprint(key)}"


@dataclass(frozen=True)
class KnownHosts:
    keys: paramiko.HostKeys
    revoked: frozenset[bytes]  # key blobs marked @revoked
    file: Path  # where new keys are appended
    file_exists: bool


def load_known_hosts(opts: SshOptions) -> KnownHosts:
    if opts.known_hosts is not None:
        target = Path(opts.known_hosts).expanduser()
        sources = [target]
    else:
        target = DEFAULT_KNOWN_HOSTS.expanduser()
        sources = [SYSTEM_KNOWN_HOSTS, target]
    keys = paramiko.HostKeys()
    revoked: set[bytes] = set()
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise HostKeyUnknown(
                f"cannot read the known hosts file {path}: {e.strerror or e}",
                hint=f"fix the permissions of {path} or pass --known-hosts FILE",
            ) from None
        _parse_known_hosts(text, path, keys, revoked)
    return KnownHosts(keys, frozenset(revoked), target, target.exists())


def _parse_known_hosts(text: str, path: Path, keys: paramiko.HostKeys, revoked: set[bytes]) -> None:
    # Parsed here rather than by HostKeys.load: that one trips over @markers and stops at the
    # first malformed line, and we must honour @revoked.
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except (paramiko.SSHException, ValueError) as e:
            log.warning("%s:%d: ignoring unreadable host key line: %s", path, lineno, e)
            continue
        if entry is None or entry.key is None:
            continue  # key type paramiko does not know (e.g. sk-ssh-ed25519): cannot match
        if marker == "@revoked":
            revoked.add(entry.key.asbytes())
        elif marker is not None:
            log.debug("%s:%d: ignoring %s line (certificates unsupported)", path, lineno, marker)
        else:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _append_known_host(file: Path, name: str, key: paramiko.PKey) -> None:
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    # Append, never rewrite: the operator's comments, hashed entries and order stay as they are.
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())


def _keyscan_hint(dest: Destination, file: Path) -> str:
    return (
        f"verify the fingerprint with the host's owner (on the host: `ssh-keygen -lf "
        f"/etc/ssh/ssh_host_ed25519_key.pub`), then add it: `ssh-keyscan -p {dest.port} "
        f"{shlex.quote(dest.host)} >> {shlex.quote(str(file))}`; or pass --accept-new-host-key "
        f"to trust it on first use"
    )


class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Refuse unknown host keys, or accept and record them (``accept_new_host_key``)."""

    def __init__(self, dest: Destination, known: KnownHosts, accept_new: bool) -> None:
        self.dest = dest
        self.known = known
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        label = key_label(key)
        if key.asbytes() in self.known.revoked:
            raise HostKeyMismatch(
                f"the SSH host key of {hostname} ({label}) is marked @revoked in {self.known.file}",
                hint="do not connect; ask the host's owner for its current key",
                details={"fingerprint": key_fingerprint(key), "host": hostname},
            )
        if not self.accept_new:
            where = (
                f"not in {self.known.file}"
                if self.known.file_exists
                else f"{self.known.file} does not exist"
            )
            raise HostKeyUnknown(
                f"the SSH host key of {hostname} is unknown ({label}; {where})",
                hint=_keyscan_hint(self.dest, self.known.file),
                details={
                    "fingerprint": key_fingerprint(key),
                    "key_type": key.get_name(),
                    "host": hostname,
                    "known_hosts": str(self.known.file),
                },
            )
        try:
            _append_known_host(self.known.file, hostname, key)
        except OSError as e:
            raise HostKeyUnknown(
                f"accepting the new host key of {hostname} ({label}) failed: cannot write "
                f"{self.known.file}: {e.strerror or e}",
                hint="pass --known-hosts with a writable file",
            ) from None
        log.warning("permanently added %s (%s) to %s", hostname, label, self.known.file)
