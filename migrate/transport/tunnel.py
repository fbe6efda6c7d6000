"""TCP connections carried through the SSH connection (ssh -R on loopback).

Post-copy needs one TCP link from the destination's lazy-pages daemon to the source's CRIU
page server. Rather than open a port reachable from the network, the source asks the
destination's sshd to listen on its loopback and to hand each connection back through the SSH
transport, where we connect it to the page server on our own loopback.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from typing import Any

import paramiko

from migrate.checkpoint.postcopy import abort
from migrate.core.errors import ConnectionLost

log = logging.getLogger(__name__)

_CHUNK = 1 << 18
LOOPBACK = "127.0.0.1"


class SshReverseTunnel:
    """``ssh -R 127.0.0.1:<port>:127.0.0.1:<local_port>`` on an existing paramiko transport."""

    def __init__(self, transport: paramiko.Transport, local_port: int) -> None:
        self._transport = transport
        self._local_port = local_port
        self._threads: list[threading.Thread] = []
        self._socks: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._flowing = threading.Event()
        self._flowing.set()
        try:
            self._port = int(transport.request_port_forward(LOOPBACK, 0, handler=self._accept))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(
                f"the destination's sshd refused to forward a loopback port: {e}",
                hint="post-copy carries the page-server link through SSH: allow it in the "
                "destination's sshd_config (AllowTcpForwarding yes or remote), or use "
                "--strategy cold",
            ) from None

    @property
    def remote_port(self) -> int:
        return self._port

    def _accept(self, chan: paramiko.Channel, origin: Any, server: Any) -> None:
        # Called from paramiko's transport thread: connect and hand off at once.
        with self._lock:
            if self._closed:
                chan.close()
                return
            try:
                sock = socket.create_connection((LOOPBACK, self._local_port), timeout=10)
            except OSError as e:
                log.error("tunnel: cannot reach 127.0.0.1:%d: %s", self._local_port, e)
                chan.close()
                return
            sock.settimeout(None)
            # Linger 0: whenever we close this socket (this process dies included) the page
            # server gets a reset, never an orderly EOF. CRIU 4.2's page server takes an EOF
            # for "all pages moved" and then kills the source tasks: a lost link would lose
            # the source's copy of the memory with the destination's.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._socks += [sock, chan]
            server_done = threading.Event()
            t_in = threading.Thread(
                target=_chan_to_server,
                args=(chan, sock, server_done),
                daemon=True,
                name=f"tunnel-{self._local_port}-in",
            )
            t_out = threading.Thread(
                target=_server_to_chan,
                args=(sock, chan, server_done, self._flowing),
                daemon=True,
                name=f"tunnel-{self._local_port}-out",
            )
            for t in (t_in, t_out):
                t.start()
                self._threads.append(t)

    def hold(self) -> None:
        """Test hook (MIGRATE_FAULTS source:wait:postcopy): stop passing pages on, so a test
        can break the link while post-copy is certainly unfinished."""
        self._flowing.clear()

    def close(self) -> None:
        self._flowing.set()
        with self._lock:
            self._closed = True
            socks = list(self._socks)
        try:
            if self._transport.is_active():
                self._transport.cancel_port_forward(LOOPBACK, self._port)
        except (paramiko.SSHException, OSError, EOFError) as e:
            log.debug("cancelling the forward of port %d: %s", self._port, e)
        for s in socks:
            if isinstance(s, socket.socket):
                abort(s)
            else:
                s.close()
        for t in self._threads:
            t.join(timeout=2)


class DirectTunnel:
    """The agent runs on this host (local://): its loopback is ours, nothing to carry."""

    def __init__(self, local_port: int) -> None:
        self._port = local_port

    @property
    def remote_port(self) -> int:
        return self._port

    def hold(self) -> None:
        pass  # nothing passes through us to hold back

    def close(self) -> None:
        pass


def _server_to_chan(
    sock: socket.socket, chan: paramiko.Channel, done: threading.Event, flowing: threading.Event
) -> None:
    """Pages to the destination. The page server closes first when all went well (it answers
    the daemon's close request, then hangs up): pass that EOF on."""
    try:
        while data := sock.recv(_CHUNK):
            flowing.wait()
            chan.sendall(data)
    except (OSError, EOFError, paramiko.SSHException) as e:
        log.debug("tunnel: page server side stopped: %s", e)
    done.set()
    try:
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _chan_to_server(chan: paramiko.Channel, sock: socket.socket, done: threading.Event) -> None:
    """Requests to the page server. If the destination's side ends before the page server
    has finished, the link broke: reset the connection (see SO_LINGER above)."""
    try:
        while data := chan.recv(_CHUNK):
            sock.sendall(data)
    except (OSError, EOFError, paramiko.SSHException) as e:
        log.debug("tunnel: destination side stopped: %s", e)
    if not done.wait(2.0):
        log.error(
            "tunnel: the destination's side ended before the last page: resetting the "
            "page server's connection"
        )
    abort(sock)  # linger 0: a reset
