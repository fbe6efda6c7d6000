"""The OpenSSH bulk connection's pure logic: its command line, the token, and how a
Connection routes a stream to it (and gives it up after an error)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_protocol import Pipe

from migrate.agent.server import Agent
from migrate.core import errors
from migrate.transport import BulkTarget, bulk_sink, openssh
from migrate.transport.openssh import ssh_argv
from migrate.wire import framing, messages
from migrate.wire.bulk import attach_bulk
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import PutLog, Status
from migrate.wire.results import LogResult
from migrate.wire.stream import StreamReader

TARGET = BulkTarget(
    host="10.0.0.2",
    port=2222,
    user="admin",
    identity=Path("/keys/id ed25519"),
    host_key_type="ssh-ed25519",
    host_key_b64="AAAAC3NzaC1lZDI1NTE5AAAAIFAKE",
    agent_command="export DOCKER_HOST=x; migrate agent --docker-host 'unix:///a b'",
)


def _opts(argv: list[str]) -> dict[str, str]:
    out = {}
    for i, a in enumerate(argv):
        if a == "-o":
            k, _, v = argv[i + 1].partition("=")
            out[k] = v
    return out


def test_argv_pins_the_verified_key_and_trusts_nothing_else() -> None:
    argv = ssh_argv("/usr/bin/ssh", TARGET, Path("/tmp/kh"), "/run/migrate/bulk-x/s")
    o = _opts(argv)
    assert argv[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]  # no user ssh_config
    assert o["StrictHostKeyChecking"] == "yes"
    assert o["UserKnownHostsFile"] == "/tmp/kh"
    assert o["GlobalKnownHostsFile"] == "/dev/null"
    assert o["HostKeyAlias"] == openssh.HOST_KEY_ALIAS
    assert o["HostKeyAlgorithms"] == "ssh-ed25519"
    assert o["BatchMode"] == "yes" and o["UpdateHostKeys"] == "no"
    assert o["Ciphers"].split(",")[0] == "aes128-gcm@openssh.com"
    assert int(o["ServerAliveInterval"]) * int(o["ServerAliveCountMax"]) <= 20
    assert o["ControlPath"] == "none" and o["ForwardAgent"] == "no"
    assert o["EscapeChar"] == "none"


def test_argv_same_user_port_identity_and_remote_command() -> None:
    argv = ssh_argv("ssh", TARGET, Path("/tmp/kh"), "/run/migrate/bulk-x/s")
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "admin"
    assert argv[argv.index("-i") + 1] == "/keys/id ed25519"
    assert _opts(argv)["IdentitiesOnly"] == "yes"
    # The host comes after "--" (a host name can not be taken for an option), the remote
    # command is the agent's own, one argument.
    assert argv[-3:] == ["--", "10.0.0.2", TARGET.agent_command + " --sink /run/migrate/bulk-x/s"]


def test_argv_without_identity_leaves_openssh_its_defaults() -> None:
    t = BulkTarget(**{**TARGET.__dict__, "identity": None})
    argv = ssh_argv("ssh", t, Path("/tmp/kh"), "/s")
    assert "-i" not in argv and "IdentitiesOnly" not in _opts(argv)


def test_sink_path_is_quoted_for_the_remote_shell() -> None:
    assert openssh.sink_command("migrate agent", "/run/a b;rm -rf /") == (
        "migrate agent --sink '/run/a b;rm -rf /'"
    )


@pytest.mark.parametrize(
    ("ktype", "algs"),
    [
        ("ssh-ed25519", "ssh-ed25519"),
        ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
        ("ssh-rsa", "rsa-sha2-512,rsa-sha2-256,ssh-rsa"),
    ],
)
def test_host_key_algorithms(ktype: str, algs: str) -> None:
    assert openssh.host_key_algorithms(ktype) == algs


def test_known_hosts_has_only_the_pinned_key() -> None:
    assert openssh.known_hosts_text(TARGET) == (
        f"{openssh.HOST_KEY_ALIAS} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE\n"
    )


def test_tokens_are_random_and_strictly_parsed() -> None:
    a, b = bulk_sink.new_token(), bulk_sink.new_token()
    assert a != b and len(a) == bulk_sink.TOKEN_HEX_LEN
    line = bulk_sink.token_line(a)
    assert bulk_sink.parse_token_line(line) == a.encode()
    for bad in (
        line[:-1],
        line[:-1] + b"x",
        a.upper().encode() + b"\n",
        b"",
        line + b"\n",
        b"g" * 64 + b"\n",
    ):
        assert bulk_sink.parse_token_line(bad) is None
    with pytest.raises(ValueError):
        bulk_sink.token_line("not-a-token")


# --- routing streams ------------------------------------------------------------------------


class FakeBulk(Pipe):
    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.killed = False
        self.closed = False
        self.fail_after = fail_after

    def sendall(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise errors.ConnectionLost("broken pipe")
        self.sent += data

    def alive(self) -> bool:
        return not self.killed

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.closed = True


def _frames(data: bytes) -> list[framing.Frame]:
    ch = Pipe(data)
    out = []
    while ch.buf:
        out.append(framing.read_frame(ch))
    return out


def _answer(rid: int, result: dict[str, object]) -> bytes:
    return framing.encode_control(messages.response_message(rid, result))


def test_stream_goes_to_the_bulk_connection_with_its_header() -> None:
    ctl = Pipe(_answer(1, {"bytes": 6000}))
    conn = Connection(ctl)
    bulk = FakeBulk()
    conn.bulk = bulk
    res = AgentClient(conn).call(PutLog(migration_id="m"), stream=iter([b"hello " * 1000]))
    assert res.result == LogResult(bytes=6000)
    req = _frames(bytes(ctl.sent))
    assert len(req) == 1 and framing.decode_control(req[0].body)["via"] == "bulk"
    frames = _frames(bytes(bulk.sent))
    assert frames[0].kind == framing.KIND_CONTROL
    assert framing.decode_control(frames[0].body) == {"type": "stream", "id": 1}
    assert frames[-1].kind == framing.KIND_END
    assert all(f.kind == framing.KIND_DATA for f in frames[1:-1])
    # Read back by the agent's reader from the bulk bytes (after the header).
    reader = StreamReader(Connection(Pipe(bytes(bulk.sent)[len(frames[0].body) + 7 :])))
    assert reader.read() == b"hello " * 1000
    conn.close()
    assert bulk.closed


def test_a_broken_bulk_stream_kills_it_and_is_not_reused() -> None:
    conn = Connection(Pipe())
    bulk = FakeBulk(fail_after=10)
    conn.bulk = bulk
    with pytest.raises(errors.ConnectionLost):
        AgentClient(conn).call(PutLog(migration_id="m"), stream=iter([os.urandom(3 << 20)]))
    assert bulk.killed and conn.bulk is None


def test_a_source_read_error_mid_stream_kills_the_bulk_connection() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 100
        raise errors.DiskFull("read failed")

    conn = Connection(Pipe())
    bulk = FakeBulk()
    conn.bulk = bulk
    with pytest.raises(errors.DiskFull):
        AgentClient(conn).call(PutLog(migration_id="m"), stream=chunks())
    assert bulk.killed and conn.bulk is None
    assert _frames(bytes(bulk.sent))[-1].kind != framing.KIND_END


def test_a_dead_bulk_connection_fails_the_stream_before_the_request() -> None:
    ctl = Pipe()
    conn = Connection(ctl)
    bulk = FakeBulk()
    bulk.killed = True
    conn.bulk = bulk
    with pytest.raises(errors.ConnectionLost):
        AgentClient(conn).call(PutLog(migration_id="m"), stream=iter([b"x"]))
    assert not ctl.sent and conn.bulk is None


def test_calls_without_a_stream_stay_on_the_control_channel() -> None:
    ctl = Pipe(_answer(1, {"last": "", "live": False}))
    conn = Connection(ctl)
    conn.bulk = FakeBulk()
    AgentClient(conn).call(Status(migration_id="m"))
    assert "via" not in framing.decode_control(_frames(bytes(ctl.sent))[0].body)
    assert not conn.bulk.sent  # type: ignore[union-attr]


# --- the agent's side -------------------------------------------------------------------------


def _agent_with_bulk(bulk_bytes: bytes) -> Agent:
    agent = Agent(Connection(Pipe()), engine_factory=lambda: None)
    agent._bulk = Connection(Pipe(bulk_bytes))
    return agent


def test_agent_takes_the_stream_whose_header_names_the_request() -> None:
    data = framing.encode_control(messages.stream_header(7)) + framing.encode_frame(
        framing.KIND_END, b""
    )
    agent = _agent_with_bulk(data)
    conn = agent._stream_conn(7, "bulk")
    assert conn is agent._bulk
    assert conn.recv_frame().kind == framing.KIND_END


@pytest.mark.parametrize(
    "head",
    [
        framing.encode_control(messages.stream_header(6)),  # another request's stream
        framing.encode_frame(framing.KIND_DATA, b"x"),  # no header at all
        framing.encode_control({"type": "stream", "id": 7, "extra": 1}),
        b"XX" + b"\0" * 5,  # not a frame
    ],
)
def test_agent_refuses_a_bulk_stream_out_of_step(head: bytes) -> None:
    agent = _agent_with_bulk(head)
    with pytest.raises(errors.ConnectionLost):
        agent._stream_conn(7, "bulk")
    assert agent._bulk is None  # given up for good


def test_agent_refuses_bulk_streams_it_cannot_read() -> None:
    agent = Agent(Connection(Pipe()), engine_factory=lambda: None)
    with pytest.raises(errors.ConnectionLost):
        agent._stream_conn(1, "bulk")  # never opened
    with pytest.raises(errors.ConnectionLost):
        agent._stream_conn(1, "carrier-pigeon")
    assert agent._stream_conn(1, None) is agent.conn


# --- the handover over a real unix socket (no SSH) ---------------------------------------------


def test_listener_hands_over_the_sinks_pipes_and_leaves_nothing(tmp_path: Path) -> None:
    listener = bulk_sink.BulkListener(tmp_path)
    assert (listener.dir.stat().st_mode & 0o777) == 0o700
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(listener.path))
    socket.send_fds(s, [listener.token.encode()], [in_r, out_w])
    end = listener.wait(10)
    assert end is not None
    assert os.read(out_r, 100) == bulk_sink.ACK
    assert not listener.dir.exists()  # removed once the sink connected
    os.write(in_w, b"frames")
    assert end.recv(100) == b"frames"
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(s.recv(10)))
    t.start()
    listener.close()
    t.join(5)
    assert got == [b""]  # the sink is told to go
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)
    s.close()


def test_listener_refuses_a_wrong_token(tmp_path: Path) -> None:
    listener = bulk_sink.BulkListener(tmp_path)
    r, w = os.pipe()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(listener.path))
    socket.send_fds(s, [bulk_sink.new_token().encode()], [r, w])
    assert listener.wait(10) is None
    assert "wrong bulk token" in listener.error
    assert s.recv(10) == b""  # closed on it
    assert not listener.dir.exists()
    listener.close()
    for fd in (r, w):
        os.close(fd)
    s.close()


def test_check_row_for_the_bulk_connection() -> None:
    from migrate.source.dest_checks import bulk_result

    up = bulk_result("", True)
    assert up is not None and up.ok and up.status == "ok"
    down = bulk_result("OpenSSH bulk connection unavailable: Permission denied", False)
    assert down is not None and down.status == "warn" and "Permission denied" in down.problem
    assert bulk_result("", False) is None  # local://: no row


# --- choosing the channel (attach_bulk) --------------------------------------------------------


class _SshLike(Pipe):
    peer = "ssh://root@b:22"

    def bulk(self) -> Callable[[], BulkTarget]:
        return lambda: TARGET


def test_attach_bulk_modes_without_trying_ssh() -> None:
    local = Connection(Pipe())
    assert attach_bulk(AgentClient(local), "auto", frozenset({"bulk_open"})).name == "local"
    with pytest.raises(errors.BulkUnavailable) as e:
        attach_bulk(AgentClient(local), "openssh", frozenset({"bulk_open"}))
    assert e.value.exit_code == errors.EXIT_REFUSED
    ssh = Connection(_SshLike())
    ch = attach_bulk(AgentClient(ssh), "paramiko", frozenset({"bulk_open"}))
    assert (ch.name, ssh.bulk) == ("paramiko", None)
    # An older agent without bulk_open: auto falls back and says why, openssh refuses.
    ch = attach_bulk(AgentClient(ssh), "auto", frozenset())
    assert ch.name == "paramiko" and "no bulk connection" in ch.note and ssh.bulk is None
    with pytest.raises(errors.BulkUnavailable, match="no bulk connection"):
        attach_bulk(AgentClient(ssh), "openssh", frozenset())
    with pytest.raises(ValueError):
        attach_bulk(AgentClient(ssh), "carrier-pigeon", frozenset())


def test_attach_bulk_falls_back_when_ssh_does_not_come_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = bulk_sink.new_token()
    ctl = _SshLike(
        framing.encode_control(
            messages.response_message(1, {"socket": "/run/migrate/bulk-x/s", "token": token})
        )
    )
    conn = Connection(ctl)
    # An "ssh" that says what OpenSSH says when the key is refused, and exits 255.
    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\necho 'root@b: Permission denied (publickey).' >&2\nexit 255\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[Path] = []
    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(
        tempfile, "mkstemp", lambda **kw: (r := real_mkstemp(**kw), seen.append(Path(r[1])))[0]
    )
    ch = attach_bulk(AgentClient(conn), "auto", frozenset({"bulk_open"}))
    assert ch.name == "paramiko" and "Permission denied" in ch.note, ch
    assert conn.bulk is None
    assert len(seen) == 1 and seen[0].parent == tmp_path  # it was written, then removed
    assert not list(tmp_path.glob("migrate-bulk-*")), "known_hosts copy left behind"


def test_stale_known_hosts_of_dead_sources_are_swept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"migrate-bulk-{dead.pid}-abc.known_hosts"
    mine = tmp_path / f"migrate-bulk-{os.getpid()}-abc.known_hosts"
    alive = tmp_path / "migrate-bulk-1-abc.known_hosts"  # init: alive
    other = tmp_path / "migrate-bulk-x.known_hosts"
    for f in (stale, mine, alive, other):
        f.write_text("x")
    openssh._sweep_known_hosts()
    assert not stale.exists() and mine.exists() and alive.exists() and other.exists()


@pytest.mark.parametrize(
    "answer",
    [
        {"socket": "/run/migrate/bulk-x/s", "token": "short"},
        {"socket": "/run/migrate/bulk-x/s", "token": "A" * 64},
        {"socket": "relative/s", "token": "a" * 64},
        {"socket": 5, "token": "a" * 64},
        {},
    ],
)
def test_a_malformed_bulk_open_answer_falls_back_or_refuses(answer: dict[str, object]) -> None:
    def conn() -> Connection:
        return Connection(_SshLike(framing.encode_control(messages.response_message(1, answer))))

    ch = attach_bulk(AgentClient(conn()), "auto", frozenset({"bulk_open"}))
    assert ch.name == "paramiko" and "malformed" in ch.note
    with pytest.raises(errors.BulkUnavailable, match="malformed"):
        attach_bulk(AgentClient(conn()), "openssh", frozenset({"bulk_open"}))
