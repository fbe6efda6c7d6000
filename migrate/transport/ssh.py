"""SSH to the destination with paramiko: host key checks, auth, and the agent's exec channel.

The agent runs as ``ssh HOST 'migrate agent'`` would run it: its stdin/stdout carry the
protocol on one exec channel, its stderr is kept (bounded) for error messages.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

import paramiko

from migrate.core.errors import (
    AgentUnavailable,
    AuthFailed,
    BadDestination,
    ConnectionLost,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
    MigrateError,
    Timeout,
)
from migrate.transport.openssh import BulkTarget
from migrate.transport.tail import DEFAULT_TAIL_BYTES, StderrTail
from migrate.transport.tunnel import SshReverseTunnel

log = logging.getLogger(__name__)

DEFAULT_PORT = 22
DEFAULT_USER = "root"
DEFAULT_AGENT_COMMAND = "migrate agent"
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
# Read (never written) when no --known-hosts is given, as OpenSSH does.
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")

# Throughput tuning, measured in benchmarks/results/ssh.md. These two only shape what the
# agent sends us (what we send is paced by sshd's own 2 MiB window and 32 KiB packets).
# Receive window: 16 MiB covers 1 Gbit/s at 100 ms round trip and bounds what can pile up in
# memory; measured on loopback 8-64 MiB are alike.
WINDOW_SIZE = 16 << 20
# Largest packet we accept: OpenSSH sends packets this big when allowed, and fewer packets
# means less per-packet Python work (with 32 KiB packets, large windows sometimes collapsed
# to ~150 MB/s).
MAX_PACKET_SIZE = 256 << 10
# AES-GCM is one AEAD pass (no separate HMAC) and AES-NI accelerated: fastest in paramiko by
# far. chacha20-poly1305 is not offered by paramiko; ctr+etm is the fallback.
PREFERRED_CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
PREFERRED_MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
# paramiko rekeys every 512 MiB in each direction, and its rekeying is fragile: when its
# transport thread must send a message mid-rekey (seen: answering the agent's channel close;
# its keepalives take the same path) it waits for the rekey it alone can finish, stalls 30 s
# and drops the connection (benchmarks/results/ssh.md). So rekey only where OpenSSH itself would for
# AES: after 2^32 blocks of 16 bytes (64 GiB).
REKEY_BYTES = 1 << 36
# sendall hands paramiko at most this much per call: paramiko slices what remains after each
# packet, so one huge buffer would be copied over and over.
SEND_CHUNK = 1 << 20

CONNECT_TIMEOUT_S = 10.0
# Keep-alives every 2 s keep data in flight, so a dead link trips DEAD_PEER_TIMEOUT_S below
# even while we only wait for an answer (issue 5: noticed within seconds, not hours).
KEEPALIVE_INTERVAL_S = 2.0
OP_TIMEOUT_S = 60.0
# With keepalives flowing, unacknowledged data for this long means the peer is gone: the kernel
# then drops the socket (TCP_USER_TIMEOUT) instead of retransmitting for ~15 minutes.
DEAD_PEER_TIMEOUT_S = 15.0
# How long close() lets the agent exit after its stdin hit EOF.
CLOSE_TIMEOUT_S = 10.0
# stdout EOF and stderr EOF arrive together; let the drain thread catch up before explaining.
STDERR_SETTLE_S = 2.0


# --- destinations -----------------------------------------------------------------------

_DEST_RE = re.compile(
    r"""
    ssh://
    (?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?
    (?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]*))
    (?::(?P<port>[0-9]{1,5}))?
    /?
    """,
    re.VERBOSE,
)
_DEST_HINT = (
    "use ssh://[USER@]HOST[:PORT], e.g. ssh://root@10.0.0.2 or ssh://admin@host.example:2222 "
    "(IPv6 in brackets: ssh://[2001:db8::2]:22)"
)


@dataclass(frozen=True)
class Destination:
    host: str  # a name or an IP address; IPv6 without brackets
    user: str = DEFAULT_USER
    port: int = DEFAULT_PORT

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts."""
        if self.port == DEFAULT_PORT:
            return self.host
        return f"[{self.host}]:{self.port}"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def __str__(self) -> str:
        return f"ssh://{self.netloc}"


def parse_destination(url: str) -> Destination:
    """Parse ``ssh://[USER@]HOST[:PORT]``; anything else is a BadDestination."""
    m = _DEST_RE.fullmatch(url.strip())
    if m is None:
        raise BadDestination(f"not a valid destination: {url!r}", hint=_DEST_HINT)
    host = m["host"]
    if m["ipv6"] is not None:
        try:
            ip = ipaddress.ip_address(m["ipv6"])
        except ValueError:
            raise BadDestination(f"not a valid IPv6 address in {url!r}", hint=_DEST_HINT) from None
        if ip.version != 6:
            raise BadDestination(f"brackets are for IPv6 addresses only: {url!r}", hint=_DEST_HINT)
        host = ip.compressed
    port = DEFAULT_PORT
    if m["port"] is not None:
        port = int(m["port"])
        if not 0 < port < 65536:
            raise BadDestination(f"port {port} out of range in {url!r}", hint=_DEST_HINT)
    # Host names are case-insensitive; known_hosts entries are written in lower case.
    return Destination(host=host.lower(), user=m["user"] or DEFAULT_USER, port=port)


# --- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshOptions:
    identity: Path | None = None  # None: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts (+ /etc/ssh/ssh_known_hosts)
    accept_new_host_key: bool = False  # trust on first use and append the key to known_hosts
    connect_timeout: float = CONNECT_TIMEOUT_S  # TCP connect, banner, key exchange, auth each
    keepalive_interval: float = KEEPALIVE_INTERVAL_S
    op_timeout: float = OP_TIMEOUT_S  # opening a channel, starting a command, run()
    dead_peer_timeout: float = DEAD_PEER_TIMEOUT_S
    # Tuning knobs; the benchmark passes paramiko's defaults here to compare.
    window_size: int = WINDOW_SIZE
    max_packet_size: int = MAX_PACKET_SIZE
    ciphers: tuple[str, ...] | None = PREFERRED_CIPHERS  # None: paramiko's own order
    macs: tuple[str, ...] | None = PREFERRED_MACS
    rekey_bytes: int | None = REKEY_BYTES  # None: paramiko's default (512 MiB)


def key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` and OpenSSH's prompts show it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _key_label(key: paramiko.PKey) -> str:
    name = key.get_name()
    short = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(name)
    if short is None and name.startswith("ecdsa-"):
        short = "ECDSA"
    return f"{short or name} key {key_fingerprint(key)}"


# --- known hosts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _KnownHosts:
    keys: paramiko.HostKeys
    revoked: frozenset[bytes]  # key blobs marked @revoked
    file: Path  # where new keys are appended
    file_exists: bool


def _load_known_hosts(opts: SshOptions) -> _KnownHosts:
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
    return _KnownHosts(keys, frozenset(revoked), target, target.exists())


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


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Refuse unknown host keys, or accept and record them (``accept_new_host_key``)."""

    def __init__(self, dest: Destination, known: _KnownHosts, accept_new: bool) -> None:
        self.dest = dest
        self.known = known
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        label = _key_label(key)
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


# --- connecting ---------------------------------------------------------------------------


def _open_socket(dest: Destination, opts: SshOptions) -> socket.socket:
    unreachable_hint = (
        f"check that {dest.host} is up, that sshd listens on port {dest.port} and that no "
        "firewall is in the way (`migrate check --to ...` tests the whole path)"
    )
    try:
        sock = socket.create_connection((dest.host, dest.port), timeout=opts.connect_timeout)
    except socket.gaierror as e:
        raise HostUnreachable(
            f"cannot resolve {dest.host}: {e.strerror or e}",
            hint="check the host name in --to, or use its IP address",
        ) from None
    except TimeoutError:
        raise HostUnreachable(
            f"connecting to {dest.host} port {dest.port} timed out after "
            f"{opts.connect_timeout:g} s",
            hint=unreachable_hint,
        ) from None
    except OSError as e:
        raise HostUnreachable(
            f"cannot connect to {dest.host} port {dest.port}: {e.strerror or e}",
            hint=unreachable_hint,
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # control frames are small
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(opts.dead_peer_timeout * 1000)
        )
    return sock


def _transport_factory(opts: SshOptions) -> Any:
    def factory(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
        t = paramiko.Transport(
            sock,
            default_window_size=opts.window_size,
            default_max_packet_size=opts.max_packet_size,
            **kwargs,
        )
        sec = t.get_security_options()
        if opts.ciphers is not None:
            sec.ciphers = _prefer(sec.ciphers, opts.ciphers)
        if opts.macs is not None:
            sec.digests = _prefer(sec.digests, opts.macs)
        if opts.rekey_bytes is not None:
            t.packetizer.REKEY_BYTES = opts.rekey_bytes
        return t

    return factory


def _prefer(available: Sequence[str], preferred: Sequence[str]) -> tuple[str, ...]:
    """Our preferred algorithms first (those this paramiko has), then the rest in its order."""
    first = [a for a in preferred if a in available]
    return tuple(first + [a for a in available if a not in first])


def connect(dest: Destination, opts: SshOptions | None = None) -> SshSession:
    """Connect, verify the host key, authenticate; every step bounded by ``connect_timeout``."""
    opts = opts or SshOptions()
    known = _load_known_hosts(opts)
    client = paramiko.SSHClient()
    # Only this host's entries, under its plain name: hashed names were matched while loading.
    name = dest.known_hosts_name
    for ktype, key in (known.keys.lookup(name) or {}).items():
        client.get_host_keys().add(name, ktype, key)
    client.set_missing_host_key_policy(_RefuseUnknownHost(dest, known, opts.accept_new_host_key))

    if opts.identity is not None:
        identity = Path(opts.identity).expanduser()
        if not identity.is_file():
            raise AuthFailed(
                f"identity file {identity} does not exist",
                hint="pass --identity with the path of a private key",
            )
        auth: dict[str, Any] = {
            "pkey": _load_identity(identity),
            "allow_agent": False,
            "look_for_keys": False,
        }
    else:
        auth = {"allow_agent": True, "look_for_keys": True}

    sock = _open_socket(dest, opts)
    log.debug("connecting to %s", dest)
    try:
        client.connect(
            dest.host,
            port=dest.port,
            username=dest.user,
            sock=sock,
            timeout=opts.connect_timeout,
            banner_timeout=opts.connect_timeout,
            auth_timeout=opts.connect_timeout,
            channel_timeout=opts.op_timeout,
            transport_factory=_transport_factory(opts),
            **auth,
        )
    except MigrateError:
        _close_quietly(client, sock)
        raise
    except paramiko.BadHostKeyException as e:
        _close_quietly(client, sock)
        raise HostKeyMismatch(
            f"the SSH host key of {dest.known_hosts_name} has CHANGED: the server sent "
            f"{_key_label(e.key)}, {known.file} has {_key_label(e.expected_key)}",
            hint=(
                "someone may be intercepting the connection: do not proceed until the host's "
                "owner confirms the new key; if the host was reinstalled, remove the old entry "
                f"with `ssh-keygen -R {shlex.quote(dest.known_hosts_name)} -f "
                f"{shlex.quote(str(known.file))}` and add the verified new key"
            ),
            details={
                "fingerprint": key_fingerprint(e.key),
                "expected_fingerprint": key_fingerprint(e.expected_key),
                "host": dest.known_hosts_name,
                "known_hosts": str(known.file),
            },
        ) from None
    except paramiko.AuthenticationException as e:
        _close_quietly(client, sock)
        raise AuthFailed(
            f"SSH authentication as {dest.user} on {dest.host} failed: {e}",
            hint=_auth_hint(dest, opts),
        ) from None
    except paramiko.SSHException as e:
        # After the key exchange and the host key check, only authentication remains.
        t = client.get_transport()
        authenticating = t is not None and t.host_key is not None
        _close_quietly(client, sock)
        if authenticating:
            raise AuthFailed(
                f"SSH authentication as {dest.user} on {dest.host} failed: {e}",
                hint=_auth_hint(dest, opts),
            ) from None
        raise HostUnreachable(
            f"SSH handshake with {dest.host} port {dest.port} failed: {e}",
            hint=f"check that port {dest.port} on {dest.host} is an SSH server and that it "
            "allows modern algorithms (ed25519/ecdsa host keys, AES ciphers)",
        ) from None
    except (OSError, EOFError) as e:
        _close_quietly(client, sock)
        raise HostUnreachable(
            f"the SSH connection to {dest.host} port {dest.port} failed: {e}",
            hint=f"check that {dest.host} is up and sshd answers on port {dest.port}",
        ) from None

    transport = client.get_transport()
    assert transport is not None
    server_key = transport.get_remote_server_key()
    if server_key.asbytes() in known.revoked:
        _close_quietly(client, sock)
        raise HostKeyMismatch(
            f"the SSH host key of {dest.known_hosts_name} ({_key_label(server_key)}) is marked "
            f"@revoked in {known.file}",
            hint="do not connect; ask the host's owner for its current key",
            details={"fingerprint": key_fingerprint(server_key), "host": dest.known_hosts_name},
        )
    transport.set_keepalive(opts.keepalive_interval)
    log.info(
        "connected to %s (cipher %s, host key %s)",
        dest,
        transport.remote_cipher,
        _key_label(transport.get_remote_server_key()),
    )
    return SshSession(client, dest, opts)


def _load_identity(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise AuthFailed(
            f"identity file {path} is encrypted",
            hint="load it into ssh-agent (`ssh-add`) and omit --identity, or use an unencrypted "
            "key kept for this purpose",
        ) from None
    except (paramiko.SSHException, ValueError, OSError) as e:
        raise AuthFailed(
            f"cannot load the identity file {path}: {e}",
            hint="pass --identity with an OpenSSH private key (ed25519, ecdsa or rsa)",
        ) from None


def _auth_hint(dest: Destination, opts: SshOptions) -> str:
    if opts.identity is not None:
        return (
            f"add the public key of {opts.identity} to ~{dest.user}/.ssh/authorized_keys on "
            f"{dest.host} (`ssh-copy-id -i {shlex.quote(str(opts.identity))} -p {dest.port} "
            f"{dest.user}@{dest.host}`), or pass the right --identity"
        )
    return (
        f"pass --identity KEY, or load the key into ssh-agent (`ssh-add`); its public key must be "
        f"in ~{dest.user}/.ssh/authorized_keys on {dest.host}. Encrypted keys need ssh-agent."
    )


def _close_quietly(client: paramiko.SSHClient, sock: socket.socket) -> None:
    try:
        client.close()
    finally:
        sock.close()


# --- sessions and channels ----------------------------------------------------------------


class RunResult(NamedTuple):
    rc: int  # -1 when the server reported no exit status (e.g. killed by a signal)
    stdout: str
    stderr: str


def _env_prefix(env: Mapping[str, str] | None) -> str:
    # sshd drops environment requests not in its AcceptEnv, so variables travel in the command.
    if not env:
        return ""
    parts = []
    for name, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"invalid environment variable name {name!r}")
        parts.append(f"{name}={shlex.quote(value)}")
    return "export " + " ".join(parts) + "; "


class SshSession:
    """An authenticated SSH connection; opens exec channels."""

    def __init__(self, client: paramiko.SSHClient, dest: Destination, opts: SshOptions) -> None:
        self.client = client
        self.dest = dest
        self.opts = opts

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport()
        if t is None:
            raise ConnectionLost(f"the SSH session to {self.dest} is closed")
        return t

    @property
    def peer(self) -> str:
        return str(self.dest)

    def is_active(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()

    def exec(
        self, command: str, *, tail_bytes: int = DEFAULT_TAIL_BYTES, close_session: bool = False
    ) -> SshChannel:
        """Run a shell command on an exec channel; the channel carries its stdin/stdout.

        With ``close_session`` the channel owns this session: closing the channel, or failing
        to start the command, closes the session too.
        """
        if not command.strip():
            raise ValueError("empty remote command")
        try:
            chan = self._start(command)
        except BaseException:
            if close_session:
                self.close()
            raise
        log.debug("started on %s: %s", self.dest, command)
        return SshChannel(
            chan,
            peer=str(self.dest),
            command=command,
            session=self if close_session else None,
            tail_bytes=tail_bytes,
        )

    def _start(self, command: str) -> paramiko.Channel:
        try:
            chan = self.transport.open_session(timeout=self.opts.op_timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise AgentUnavailable(
                f"cannot open an SSH channel to {self.dest}: {e}",
                hint="check MaxSessions in the destination's sshd_config and that the "
                "connection is still up",
            ) from None
        chan.settimeout(self.opts.op_timeout)
        # paramiko waits for the exec reply without a timeout: a watchdog closes the channel,
        # which wakes that wait, if the server never answers.
        started = threading.Event()

        def expire() -> None:
            if not started.is_set():
                chan.close()

        watchdog = threading.Timer(self.opts.op_timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(command)
            started.set()
        except (paramiko.SSHException, OSError, EOFError) as e:
            chan.close()
            raise AgentUnavailable(
                f"{self.dest} refused to run {command!r}: {e or 'no answer'}",
                hint="the destination's sshd must allow commands for this user (no "
                "ForceCommand or restricted shell)",
            ) from None
        finally:
            watchdog.cancel()
        return chan

    def start_agent(
        self,
        command: str = DEFAULT_AGENT_COMMAND,
        env: Mapping[str, str] | None = None,
        *,
        close_session: bool = True,
    ) -> SshChannel:
        """Start the agent on an exec channel.

        By default closing the channel also closes this session: one session per agent is how
        the tool connects (``connect(dest, opts).start_agent()``).
        """
        return self.exec(_env_prefix(env) + command, close_session=close_session)

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        *,
        input: bytes = b"",
    ) -> RunResult:
        """Run a small command (argv quoted for the remote shell); output is read in full."""
        if not argv:
            raise ValueError("empty argv")
        timeout = self.opts.op_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        command = shlex.join(argv)
        ch = self.exec(command, tail_bytes=1 << 20)
        try:
            ch.settimeout(timeout)
            if input:
                ch.sendall(input)
            ch.shutdown_write()
            out = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"{command!r} on {self.dest} took longer than {timeout:g} s")
                ch.settimeout(remaining)
                try:
                    chunk = ch.recv(65536)
                except Timeout:
                    raise Timeout(
                        f"{command!r} on {self.dest} took longer than {timeout:g} s"
                    ) from None
                if not chunk:
                    break
                out += chunk
            rc = ch.exit_status(max(0.0, deadline - time.monotonic()))
            if rc is None:
                raise Timeout(f"{command!r} on {self.dest} did not exit within {timeout:g} s")
            return RunResult(
                rc, out.decode("utf-8", "replace"), ch.stderr_bytes().decode("utf-8", "replace")
            )
        finally:
            ch.close(timeout=0)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SshChannel:
    """A :class:`migrate.transport.Channel` over one SSH exec channel."""

    def __init__(
        self,
        chan: paramiko.Channel,
        *,
        peer: str,
        command: str,
        session: SshSession | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        self.chan = chan
        self.command = command
        self._peer = peer
        self._session = session
        self._closed = False
        # Received but not yet returned (see recv); bounded by our window size.
        self._pending = b""
        self._pending_pos = 0
        self._grab = max(chan.in_window_size, 1 << 20)
        self._tail = StderrTail(tail_bytes)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"ssh-stderr-{chan.get_id()}", daemon=True
        )
        self._stderr_thread.start()

    # --- Channel ------------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        if self._closed:
            raise ConnectionLost(f"the channel to {self._peer} is closed")
        if self._pending_pos < len(self._pending):
            return self._take(n)
        try:
            # Take all that paramiko has buffered: its buffer deletes what was read from the
            # front, a copy of everything left, so small reads from a full window crawl.
            data: bytes = self.chan.recv(self._grab)
        except TimeoutError:
            raise Timeout(
                f"no data from {self._peer} for {self.chan.gettimeout():g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(
                f"reading from {self._peer}: {e}", details={"stderr_tail": self.stderr_tail()}
            ) from None
        if not data:
            self._stderr_thread.join(STDERR_SETTLE_S)
            self._note_lost_transport()
            return data
        if len(data) <= n:
            return data
        self._pending = data
        self._pending_pos = 0
        return self._take(n)

    def _take(self, n: int) -> bytes:
        start = self._pending_pos
        end = min(start + n, len(self._pending))
        self._pending_pos = end
        out = self._pending[start:end]
        if end == len(self._pending):
            self._pending = b""
            self._pending_pos = 0
        return out

    def sendall(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionLost(f"the channel to {self._peer} is closed")
        view = memoryview(data)
        try:
            while view:
                # paramiko sends at most one packet per call and re-slices what is left:
                # bounded chunks keep that slicing cheap.
                sent = self.chan.send(view[:SEND_CHUNK])
                if sent == 0:
                    raise OSError("the channel was closed by the other end")
                view = view[sent:]
        except TimeoutError:
            raise Timeout(
                f"{self._peer} accepted no data for {self.chan.gettimeout():g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._stderr_thread.join(STDERR_SETTLE_S)
            self._note_lost_transport()
            raise ConnectionLost(
                f"writing to {self._peer}: {e}",
                hint="see the agent's stderr tail in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None

    def settimeout(self, seconds: float | None) -> None:
        self.chan.settimeout(seconds)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send EOF, give the command ``timeout`` seconds to exit, close (and the session)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.chan.closed:
                self.chan.shutdown_write()
            rc = self.exit_status(timeout)
            if rc is None and timeout > 0:
                log.warning(
                    "%s: %r still running %g s after EOF", self._peer, self.command, timeout
                )
            else:
                log.debug("%s: %r exited with %s", self._peer, self.command, rc)
        except (paramiko.SSHException, OSError, EOFError) as e:
            log.debug("closing the channel to %s: %s", self._peer, e)
        finally:
            self.chan.close()
            self._stderr_thread.join(STDERR_SETTLE_S)
            if self._session is not None:
                self._session.close()

    def stderr_tail(self) -> str:
        return self._tail.text()

    def bulk_target(self) -> BulkTarget:
        """Where a second, OpenSSH connection must go to reach this agent's host: same host,
        port, user and identity, and the host key this connection verified (pinned)."""
        t = self.chan.get_transport()
        if self._session is None or t is None or not t.is_active():
            raise ConnectionLost(f"the SSH connection to {self._peer} is closed")
        key = t.get_remote_server_key()
        dest, opts = self._session.dest, self._session.opts
        return BulkTarget(
            host=dest.host,
            port=dest.port,
            user=dest.user,
            identity=None if opts.identity is None else Path(opts.identity).expanduser(),
            host_key_type=key.get_name(),
            host_key_b64=key.get_base64(),
            agent_command=self.command,
        )

    def reverse_tunnel(self, local_port: int) -> SshReverseTunnel:
        """A loopback port on the destination whose connections reach our ``local_port``
        through this channel's SSH connection (transport/tunnel.py)."""
        t = self.chan.get_transport()
        if t is None or not t.is_active():
            raise ConnectionLost(f"the SSH connection to {self._peer} is closed")
        return SshReverseTunnel(t, local_port)

    @property
    def peer(self) -> str:
        return self._peer

    # --- extras -------------------------------------------------------------------------

    def exit_status(self, timeout: float) -> int | None:
        """The command's exit code (-1: none reported), or None if it has not exited in time."""
        # Never recv_exit_status(): it waits forever.
        if not self.chan.status_event.wait(timeout):
            return None
        return int(self.chan.exit_status)

    def shutdown_write(self) -> None:
        """Send EOF on the command's stdin."""
        try:
            self.chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(f"closing the input of {self._peer}: {e}") from None

    def stderr_bytes(self) -> bytes:
        self._stderr_thread.join(STDERR_SETTLE_S if self.chan.eof_received else 0)
        return self._tail.data()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _note_lost_transport(self) -> None:
        t = self.chan.get_transport()
        if t is not None and not t.is_active():
            reason = t.get_exception() or "the connection dropped"
            self._tail.feed(
                f"\n[migrate: SSH connection to {self._peer} lost: {reason}]\n".encode()
            )

    def _drain_stderr(self) -> None:
        # Always drained: the SSH window is shared by stdout and stderr, so unread stderr would
        # eventually stall the agent's stdout too.
        while True:
            try:
                chunk = self.chan.recv_stderr(65536)
            except TimeoutError:
                # recv_stderr uses the channel timeout set for recv(); just wait again, but
                # never spin if someone set a tiny timeout.
                if self.chan.closed:
                    break
                if (self.chan.gettimeout() or 1.0) < 0.05:
                    time.sleep(0.05)
                continue
            except (paramiko.SSHException, OSError, EOFError) as e:
                log.debug("stderr drain for %s stopped: %s", self._peer, e)
                break
            if not chunk:
                break
            self._tail.feed(chunk)
            log.debug("%s stderr: %s", self._peer, chunk.decode("utf-8", "replace").rstrip())
