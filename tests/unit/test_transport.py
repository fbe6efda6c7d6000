"""Transports: destinations, the local pipe channel, and SSH against a real loopback sshd."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from sshd_helper import SSH_KEYGEN, Sshd, free_port, keygen, running_sshd, sshd_available

from migrate.core import errors
from migrate.transport import local as local_mod
from migrate.transport.destination import Destination, SshOptions, parse_destination
from migrate.transport.local import LocalChannel
from migrate.transport.ssh import connect
from migrate.transport.ssh_session import SshChannel
from migrate.transport.stdio import StdioChannel
from migrate.transport.tail import StderrTail

# Echo stdin to stdout; on EOF say goodbye on stderr and exit 7 (so tests can see both).
ECHO = (
    "import os, sys\n"
    "while True:\n"
    "    b = os.read(0, 65536)\n"
    "    if not b: break\n"
    "    os.write(1, b)\n"
    "sys.stderr.write('echo: bye\\n'); sys.exit(7)\n"
)


# --- destinations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ssh://host", Destination("host", "root", 22)),
        ("ssh://admin@Host.Example:2222", Destination("host.example", "admin", 2222)),
        ("ssh://10.0.0.2/", Destination("10.0.0.2", "root", 22)),
        ("ssh://u@[::1]:2200", Destination("::1", "u", 2200)),
        ("ssh://[2001:DB8:0::2]", Destination("2001:db8::2", "root", 22)),
        ("  ssh://deploy.bot@h-1  ", Destination("h-1", "deploy.bot", 22)),
    ],
)
def test_parse_destination(url: str, expected: Destination) -> None:
    assert parse_destination(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "host",
        "root@host",
        "http://host",
        "ssh://",
        "ssh://host:0",
        "ssh://host:65536",
        "ssh://host:port",
        "ssh://host/path",
        "ssh://[::1",
        "ssh://[10.0.0.1]",
        "ssh://[::zz]",
        "ssh://::1",
        "ssh://us er@host",
        "ssh://-oProxyCommand=sh@host",
        "ssh://user@-host",
        "ssh://a@b@host",
        "",
    ],
)
def test_parse_destination_rejects(url: str) -> None:
    with pytest.raises(errors.BadDestination) as ei:
        parse_destination(url)
    assert ei.value.exit_code == errors.EXIT_USAGE
    assert "ssh://[USER@]HOST[:PORT]" in ei.value.hint


def test_destination_names() -> None:
    d = parse_destination("ssh://[::1]:2222")
    assert str(d) == "ssh://root@[::1]:2222"
    assert d.known_hosts_name == "[::1]:2222"
    assert parse_destination("ssh://h").known_hosts_name == "h"
    assert parse_destination(str(d)) == d


def test_stderr_tail_is_bounded_and_drops_the_cut_line() -> None:
    t = StderrTail(limit=16)
    t.feed(b"first line that is long\nsecond\nthird\n")
    assert t.text() == "second\nthird"
    assert len(t.data()) == 16
    assert t.text(max_lines=1) == "third"
    one = StderrTail(limit=4)
    one.feed(b"abcdefgh")
    assert one.text() == "...efgh"


# --- the same contract for both channels ---------------------------------------------------

ChannelFactory = Callable[[str], "LocalChannel | SshChannel"]


def _local_factory(script: str) -> LocalChannel:
    return LocalChannel.start([sys.executable, "-c", script])


def _roundtrip(ch: LocalChannel | SshChannel, size: int) -> None:
    """Send ``size`` random bytes while reading them back; compare checksums."""
    block = os.urandom(1 << 20)
    sent = hashlib.sha256()
    errs: list[BaseException] = []

    def writer() -> None:
        try:
            left = size
            while left:
                piece = block[: min(left, len(block))]
                ch.sendall(piece)
                sent.update(piece)
                left -= len(piece)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errs.append(e)

    t = threading.Thread(target=writer)
    t.start()
    got = hashlib.sha256()
    n = 0
    while n < size:
        chunk = ch.recv(1 << 20)
        assert chunk, f"EOF after {n} bytes: {ch.stderr_tail()}"
        got.update(chunk)
        n += len(chunk)
    t.join(60)
    assert not t.is_alive() and not errs
    assert n == size
    assert got.hexdigest() == sent.hexdigest()


def test_local_roundtrip_eof_and_stderr() -> None:
    ch = LocalChannel.start([sys.executable, "-c", ECHO])
    try:
        ch.settimeout(30)
        assert ch.peer == "local"
        _roundtrip(ch, 8 << 20)
        assert ch.proc.stdin is not None
        ch.proc.stdin.close()  # EOF to the echo: it says bye and exits
        assert ch.recv(10) == b""
        assert "echo: bye" in ch.stderr_tail()
        assert ch.exit_status(10) == 7
    finally:
        ch.close()


def test_local_recv_timeout() -> None:
    with LocalChannel.start([sys.executable, "-c", ECHO]) as ch:
        ch.settimeout(0.2)
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            ch.recv(1)
        assert time.monotonic() - t0 < 5


def test_local_exit_immediately() -> None:
    script = "import sys; sys.stderr.write('agent: no docker here\\n'); sys.exit(3)"
    with LocalChannel.start([sys.executable, "-c", script]) as ch:
        ch.settimeout(10)
        assert ch.recv(100) == b""
        assert ch.stderr_tail() == "agent: no docker here"
        assert ch.exit_status(10) == 3
        with pytest.raises(errors.ConnectionLost) as ei:
            ch.sendall(b"x" * (4 << 20))  # more than any pipe buffer
        assert "no docker here" in ei.value.details["stderr_tail"]


def test_local_missing_binary() -> None:
    with pytest.raises(errors.AgentUnavailable) as ei:
        LocalChannel.start(["/nonexistent/migrate-agent"])
    assert ei.value.hint


def test_local_env_is_added() -> None:
    script = "import os; os.write(1, os.environ['MIGRATE_T'].encode())"
    with LocalChannel.start([sys.executable, "-c", script], env={"MIGRATE_T": "yes"}) as ch:
        ch.settimeout(10)
        assert ch.recv(10) == b"yes"


def test_local_stderr_flood_does_not_block() -> None:
    script = "import os, sys\nsys.stderr.write('x' * 5_000_000 + '\\nlast\\n')\nos.write(1, b'ok')"
    with LocalChannel.start([sys.executable, "-c", script]) as ch:
        ch.settimeout(10)
        assert ch.recv(10) == b"ok"
        assert ch.recv(10) == b""
        assert ch.stderr_tail().endswith("last")
        assert len(ch.stderr_tail()) <= local_mod.DEFAULT_TAIL_BYTES


def test_local_close_kills_an_agent_that_ignores_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "CLOSE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(local_mod, "TERMINATE_GRACE_S", 2.0)
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    ch = LocalChannel.start([sys.executable, "-c", script])
    t0 = time.monotonic()
    ch.close()
    assert time.monotonic() - t0 < 10
    assert ch.proc.returncode is not None and ch.proc.returncode < 0
    with pytest.raises(errors.ConnectionLost):
        ch.recv(1)


def test_local_capabilities_tunnel_to_our_own_loopback_and_no_bulk() -> None:
    with LocalChannel.start([sys.executable, "-c", ECHO]) as ch:
        assert ch.bulk() is None
        open_tunnel = ch.tunnels()
        assert open_tunnel is not None
        tunnel = open_tunnel(4321)
        assert tunnel.remote_port == 4321  # same host: the port itself
        tunnel.hold()  # nothing passes through it: a no-op
        tunnel.close()


def test_the_agents_ends_offer_no_capabilities() -> None:
    r, w = os.pipe()
    try:
        ch = StdioChannel(r, w)
        assert (ch.tunnels(), ch.bulk()) == (None, None)
    finally:
        os.close(r)
        os.close(w)


# --- SSH against a real sshd on loopback ------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    why = sshd_available()
    if why:
        pytest.skip(why)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as srv:
        yield srv


def _opts(srv: Sshd, **kw: object) -> SshOptions:
    base: dict[str, object] = {
        "identity": srv.client_key,
        "known_hosts": srv.known_hosts,
        "connect_timeout": 5.0,
        "op_timeout": 10.0,
    }
    base.update(kw)
    return SshOptions(**base)  # type: ignore[arg-type]


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(
        [SSH_KEYGEN, "-lf", str(pub)], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return out.split()[1]


def test_ssh_known_host_accepted(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)) as s:
        assert s.run(["echo", "it's", "$HOME"]) == (0, "it's $HOME\n", "")
        rc, out, err = s.run(["sh", "-c", "echo oops >&2; exit 5"])
        assert (rc, out, err) == (5, "", "oops\n")
        assert s.transport.local_cipher == "aes128-gcm@openssh.com"


def test_ssh_hashed_known_hosts(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("# comment\n\n" + sshd.host_key_line())
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(kh)], check=True, capture_output=True, timeout=10)
    assert "|1|" in kh.read_text()
    with connect(parse_destination(sshd.url), _opts(sshd, known_hosts=kh)) as s:
        assert s.run(["true"]).rc == 0


def test_ssh_unknown_host_refused(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("[127.0.0.1]:1 " + sshd.host_key_line().split(" ", 1)[1])  # other port only
    with pytest.raises(errors.HostKeyUnknown) as ei:
        connect(parse_destination(sshd.url), _opts(sshd, known_hosts=kh))
    e = ei.value
    assert e.exit_code == 3
    fp = _fingerprint(sshd.host_key.with_suffix(".pub"))
    assert fp in e.message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {kh}" in e.hint
    assert "--accept-new-host-key" in e.hint
    assert e.details["fingerprint"] == fp
    assert kh.read_text().count("\n") == 1  # nothing was added


def test_ssh_accept_new_host_key_appends(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "sub" / "known_hosts"
    dest = parse_destination(sshd.url)
    with connect(dest, _opts(sshd, known_hosts=kh, accept_new_host_key=True)) as s:
        assert s.run(["true"]).rc == 0
    assert kh.read_text() == sshd.host_key_line()
    with connect(dest, _opts(sshd, known_hosts=kh)) as s:  # now known: no flag needed
        assert s.run(["true"]).rc == 0
    # Accepting again must not duplicate the entry.
    with connect(dest, _opts(sshd, known_hosts=kh, accept_new_host_key=True)):
        pass
    assert kh.read_text() == sshd.host_key_line()


def test_ssh_accept_new_never_overrides_a_changed_key(sshd: Sshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with pytest.raises(errors.HostKeyMismatch) as ei:
        connect(parse_destination(sshd.url), _opts(sshd, known_hosts=kh, accept_new_host_key=True))
    e = ei.value
    assert e.exit_code == 3
    assert _fingerprint(sshd.host_key.with_suffix(".pub")) in e.message
    assert _fingerprint(other.with_suffix(".pub")) in e.message
    assert "ssh-keygen -R" in e.hint


def test_ssh_revoked_host_key(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.host_key_line() + "@revoked * " + sshd.host_key_line().split(" ", 1)[1])
    with pytest.raises(errors.HostKeyMismatch, match="revoked"):
        connect(parse_destination(sshd.url), _opts(sshd, known_hosts=kh))


def test_ssh_wrong_identity(sshd: Sshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(errors.AuthFailed) as ei:
        connect(parse_destination(sshd.url), _opts(sshd, identity=stranger))
    assert ei.value.exit_code == 3
    assert "authorized_keys" in ei.value.hint


def test_ssh_missing_identity(sshd: Sshd, tmp_path: Path) -> None:
    with pytest.raises(errors.AuthFailed, match="does not exist"):
        connect(parse_destination(sshd.url), _opts(sshd, identity=tmp_path / "nope"))


def test_ssh_closed_port() -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    with pytest.raises(errors.HostUnreachable) as ei:
        connect(Destination("127.0.0.1", "root", port), SshOptions(connect_timeout=3.0))
    assert ei.value.exit_code == 3
    assert ei.value.hint


def test_ssh_cat_roundtrip_50mb(sshd: Sshd) -> None:
    ch = connect(parse_destination(sshd.url), _opts(sshd)).start_agent(
        "cat; echo 'agent: done' >&2"
    )
    try:
        assert ch.peer == sshd.url
        ch.settimeout(30)
        _roundtrip(ch, 50 << 20)
        ch.shutdown_write()
        assert ch.recv(10) == b""
        assert ch.exit_status(10) == 0
        assert ch.stderr_tail() == "agent: done"
    finally:
        ch.close()
    assert not ch._session or not ch._session.is_active()  # the session went with it


def test_ssh_capabilities_tunnels_and_the_bulk_target(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent("cat") as ch:
        assert ch.tunnels() is not None
        target_of = ch.bulk()
        assert target_of is not None
        target = target_of()
        dest = parse_destination(sshd.url)
        assert (target.host, target.port, target.user) == (dest.host, dest.port, dest.user)
        assert target.identity == sshd.client_key and target.agent_command == "cat"
        assert sshd.host_key_line().split()[1:] == [target.host_key_type, target.host_key_b64]
    with pytest.raises(errors.ConnectionLost):
        target_of()  # the connection is gone: no target to follow


def test_ssh_command_not_found(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent("no-such-agent-xyz") as ch:
        ch.settimeout(10)
        assert ch.recv(100) == b""
        assert "not found" in ch.stderr_tail()
        assert ch.exit_status(10) == 127


def test_ssh_env_and_quoting(sshd: Sshd) -> None:
    value = "a b'c\"$HOME"
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent(
        'printf %s "$MIGRATE_T"', env={"MIGRATE_T": value}
    ) as ch:
        ch.settimeout(10)
        out = b""
        while chunk := ch.recv(100):
            out += chunk
        assert out.decode() == value
    with pytest.raises(ValueError):
        connect(parse_destination(sshd.url), _opts(sshd)).start_agent("true", env={"A;B": "x"})


def test_ssh_recv_timeout(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent("cat") as ch:
        ch.settimeout(0.3)
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            ch.recv(1)
        assert time.monotonic() - t0 < 5
        ch.settimeout(10)
        ch.sendall(b"still alive")  # a timeout does not break the channel
        assert ch.recv(100) == b"still alive"


def test_ssh_stderr_flood_does_not_block(sshd: Sshd) -> None:
    cmd = "head -c 8000000 /dev/zero | tr '\\0' x >&2; echo; echo >&2; echo last >&2; echo ok"
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent(cmd) as ch:
        ch.settimeout(30)
        out = b""
        while chunk := ch.recv(100):
            out += chunk
        assert out == b"\nok\n"
        assert ch.stderr_tail().endswith("last")


def test_ssh_run_timeout(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)) as s:
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            s.run(["sleep", "5"], timeout=0.5)
        assert time.monotonic() - t0 < 4
        assert s.run(["echo", "after"]).stdout == "after\n"  # the session survives


def test_ssh_send_after_exit_is_connection_lost(sshd: Sshd) -> None:
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent("echo bye >&2") as ch:
        ch.settimeout(10)
        assert ch.recv(10) == b""
        assert ch.exit_status(10) == 0
        with pytest.raises(errors.ConnectionLost):
            ch.sendall(b"x" * (8 << 20))


def test_ssh_small_reads_of_a_large_burst(sshd: Sshd) -> None:
    expected = "".join(f"{i}\n" for i in range(1, 300_001)).encode()
    with connect(parse_destination(sshd.url), _opts(sshd)).start_agent("seq 1 300000") as ch:
        ch.settimeout(10)
        assert ch.exit_status(10) == 0  # everything is buffered before the first read
        got = bytearray()
        while chunk := ch.recv(1000):
            assert len(chunk) <= 1000
            got += chunk
        assert bytes(got) == expected


@pytest.mark.parametrize(
    ("exc", "authenticating", "expected"),
    [
        (paramiko.AuthenticationException("no"), False, errors.AuthFailed),
        (paramiko.SSHException("no more methods"), True, errors.AuthFailed),
        (paramiko.SSHException("Error reading SSH protocol banner"), False, errors.HostUnreachable),
        (EOFError(), False, errors.HostUnreachable),
        (ConnectionResetError(104, "reset"), True, errors.HostUnreachable),
    ],
)
def test_connect_failures_say_which_step_failed(
    exc: Exception, authenticating: bool, expected: type[errors.MigrateError]
) -> None:
    from migrate.transport.known_hosts import KnownHosts
    from migrate.transport.ssh import _connect_failure

    known = KnownHosts(paramiko.HostKeys(), frozenset(), Path("/kh"), True)
    err = _connect_failure(exc, parse_destination("ssh://h"), SshOptions(), known, authenticating)
    assert type(err) is expected
    assert str(exc) in err.message
