"""Where and how to reach the destination over SSH: the ``ssh://`` URL and the connection's
options (their defaults tuned by measurement, benchmarks/results/ssh.md)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from migrate.core.errors import BadDestination

DEFAULT_PORT = 22
DEFAULT_USER = "root"

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

CONNECT_TIMEOUT_S = 10.0
# Keep-alives every 2 s keep data in flight, so a dead link trips DEAD_PEER_TIMEOUT_S below
# even while we only wait for an answer (issue 5: noticed within seconds, not hours).
KEEPALIVE_INTERVAL_S = 2.0
OP_TIMEOUT_S = 60.0
# With keepalives flowing, unacknowledged data for this long means the peer is gone: the kernel
# then drops the socket (TCP_USER_TIMEOUT) instead of retransmitting for ~15 minutes.
DEAD_PEER_TIMEOUT_S = 15.0


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
