"""SSH to the destination with paramiko: host key checks, authentication, keep-alives.

``connect`` returns an :class:`SshSession` (transport/ssh_session.py), which starts the agent
on an exec channel.
"""

from __future__ import annotations

import logging
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko

from migrate.core.errors import AuthFailed, HostKeyMismatch, HostUnreachable, MigrateError
from migrate.transport.destination import Destination, SshOptions
from migrate.transport.known_hosts import (
    KnownHosts,
    RefuseUnknownHost,
    key_fingerprint,
    key_label,
    load_known_hosts,
)
from migrate.transport.ssh_session import SshSession

log = logging.getLogger(__name__)


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
    known = load_known_hosts(opts)
    client = paramiko.SSHClient()
    # Only this host's entries, under its plain name: hashed names were matched while loading.
    name = dest.known_hosts_name
    for ktype, key in (known.keys.lookup(name) or {}).items():
        client.get_host_keys().add(name, ktype, key)
    client.set_missing_host_key_policy(RefuseUnknownHost(dest, known, opts.accept_new_host_key))

    auth = _auth_args(opts)
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
    except (paramiko.SSHException, OSError, EOFError) as e:
        # After the key exchange and the host key check, only authentication remains.
        t = client.get_transport()
        authenticating = t is not None and t.host_key is not None
        _close_quietly(client, sock)
        raise _connect_failure(e, dest, opts, known, authenticating) from None

    transport = client.get_transport()
    assert transport is not None
    server_key = transport.get_remote_server_key()
    if server_key.asbytes() in known.revoked:
        _close_quietly(client, sock)
        raise HostKeyMismatch(
            f"the SSH host key of {dest.known_hosts_name} ({key_label(server_key)}) is marked "
            f"@revoked in {known.file}",
            hint="do not connect; ask the host's owner for its current key",
            details={"fingerprint": key_fingerprint(server_key), "host": dest.known_hosts_name},
        )
    transport.set_keepalive(opts.keepalive_interval)
    log.info(
        "connected to %s (cipher %s, host key %s)",
        dest,
        transport.remote_cipher,
        key_label(transport.get_remote_server_key()),
    )
    return SshSession(client, dest, opts)


def _auth_args(opts: SshOptions) -> dict[str, Any]:
    """paramiko's authentication arguments: the --identity key alone, or ssh-agent and the
    default keys as OpenSSH would try them."""
    if opts.identity is not None:
        identity = Path(opts.identity).expanduser()
        if not identity.is_file():
            raise AuthFailed(
                f"identity file {identity} does not exist",
                hint="pass --identity with the path of a private key",
            )
        return {
            "pkey": _load_identity(identity),
            "allow_agent": False,
            "look_for_keys": False,
        }
    return {"allow_agent": True, "look_for_keys": True}


def _connect_failure(
    e: Exception, dest: Destination, opts: SshOptions, known: KnownHosts, authenticating: bool
) -> MigrateError:
    """What a failed handshake means for the operator; ``authenticating``: the key exchange
    and the host key check had passed."""
    if isinstance(e, paramiko.BadHostKeyException):
        return HostKeyMismatch(
            f"the SSH host key of {dest.known_hosts_name} has CHANGED: the server sent "
            f"{key_label(e.key)}, {known.file} has {key_label(e.expected_key)}",
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
        )
    if isinstance(e, paramiko.AuthenticationException) or (
        isinstance(e, paramiko.SSHException) and authenticating
    ):
        return AuthFailed(
            f"SSH authentication as {dest.user} on {dest.host} failed: {e}",
            hint=_auth_hint(dest, opts),
        )
    if isinstance(e, paramiko.SSHException):
        return HostUnreachable(
            f"SSH handshake with {dest.host} port {dest.port} failed: {e}",
            hint=f"check that port {dest.port} on {dest.host} is an SSH server and that it "
            "allows modern algorithms (ed25519/ecdsa host keys, AES ciphers)",
        )
    return HostUnreachable(
        f"the SSH connection to {dest.host} port {dest.port} failed: {e}",
        hint=f"check that {dest.host} is up and sshd answers on port {dest.port}",
    )


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
