"""Fuzzing `migrate agent` (issue 5, acceptance 3): random frames, truncated frames, oversized
lengths, random JSON and random requests of every allow-listed method, sent to the real agent
process on its stdin (the local transport) against lab host B's Docker daemon.

Whatever arrives, the agent must end cleanly (exit 0/1/2, no Python traceback) and must create
nothing: no container on B, no journal or staging file in its state directory.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.core.errors import MigrateError
from migrate.transport.local import LocalChannel
from migrate.wire.framing import KIND_CONTROL, KIND_DATA, KIND_END, MAGIC
from migrate.wire.messages import METHODS

HEADER = struct.Struct("!2sBI")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def requests(draw: Any) -> bytes:
    """A request frame for a real method, with arguments of random shapes, and for stream
    methods some DATA frames (random, so not valid zstd) and maybe an END."""
    name = draw(st.sampled_from(sorted(METHODS)))
    m = METHODS[name]
    args: dict[str, Any] = {}
    for p in m.params:
        args[p] = draw(json_values | st.just("../../../etc/passwd") | st.just("a" * 200))
    if draw(st.booleans()):
        args[draw(st.text(max_size=8))] = draw(json_values)
    msg = {"type": "request", "id": draw(st.integers(-2, 2**40)), "method": name, "args": args}
    out = frame(KIND_CONTROL, json.dumps(msg).encode())
    if m.stream:
        for body in draw(st.lists(st.binary(max_size=300), max_size=3)):
            out += frame(KIND_DATA, body)
        if draw(st.booleans()):
            out += frame(KIND_END, b"")
    return out


def frame(kind: int, body: bytes, length: int | None = None, magic: bytes = MAGIC) -> bytes:
    return HEADER.pack(magic, kind, len(body) if length is None else length) + body


raw_frames = st.builds(
    frame,
    st.integers(0, 255),
    st.binary(max_size=200),
    st.one_of(st.none(), st.integers(0, 2**32 - 1), st.just(2**32 - 1), st.just((1 << 20) + 1)),
    st.one_of(st.just(MAGIC), st.binary(min_size=2, max_size=2)),
)
json_frames = st.builds(lambda v: frame(KIND_CONTROL, json.dumps(v).encode()), json_values)
streams = st.lists(
    st.one_of(raw_frames, json_frames, requests(), st.binary(max_size=64)), min_size=1, max_size=6
).map(b"".join)
# Truncation: cut the stream anywhere.
payloads = st.tuples(streams, st.integers(0, 10_000)).map(lambda t: t[0][: max(1, t[1])])


def run_agent(payload: bytes, docker_host: str, state_dir: Path) -> tuple[int | None, str]:
    ch = LocalChannel.start(
        [sys.executable, "-m", "migrate", "agent"],
        env={
            "DOCKER_HOST": docker_host,
            "MIGRATE_STATE_DIR": str(state_dir),
            "MIGRATE_LOCK_DIR": str(state_dir / "locks"),
        },
    )
    ch.settimeout(30)
    try:
        ch.sendall(payload)
    except MigrateError:
        pass  # the agent may close its end on a broken frame before reading everything
    # Read what it answers until it closes: it must never hang on a closed input.
    ch.proc.stdin.close()  # type: ignore[union-attr]
    while True:
        try:
            if not ch.recv(1 << 16):
                break
        except MigrateError:
            break
    rc = ch.exit_status(30)
    ch.close()
    return rc, ch.stderr_tail()


def created(docker_b: Any, state_dir: Path, known: set[str]) -> list[str]:
    made = [c.name for c in docker_b.containers.list(all=True) if c.id not in known]
    made += [str(p) for p in state_dir.rglob("*") if p.is_file()]
    return made


def test_fuzzed_frames_never_crash_the_agent_or_create_anything(
    lab: Any,
    docker_b: Any,
    tmp_path: Path,
) -> None:
    docker_host = lab.host("b").docker_host
    known = {c.id for c in docker_b.containers.list(all=True)}
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    seen: list[bytes] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(payloads)
    def one(payload: bytes) -> None:
        seen.append(payload)
        rc, stderr = run_agent(payload, docker_host, state_dir)
        assert rc in (0, 1, 2), f"agent exit {rc}\n{stderr}"
        assert "Traceback" not in stderr, stderr
        # Concurrent tests of other migrations may add containers to B: only fail on names
        # our payloads could have produced (any container at all from a fuzz run is a bug,
        # but B is shared with the rest of the suite).
        files = [str(p) for p in state_dir.rglob("*") if p.is_file()]
        assert not files, f"the agent created {files}"

    one()
    assert len(seen) >= 60
    leftovers = [n for n in created(docker_b, state_dir, known) if not n.startswith("mt-")]
    assert not leftovers, leftovers


def test_oversized_and_truncated_frames_are_refused_cleanly(lab: Any, tmp_path: Path) -> None:
    """The classic cases, deterministic: each gets a clean exit and no traceback."""
    docker_host = lab.host("b").docker_host
    hello = json.dumps({"type": "request", "id": 1, "method": "hello", "args": {}}).encode()
    cases = {
        "oversized control": frame(KIND_CONTROL, b"", length=(1 << 20) + 1),
        "oversized data": frame(KIND_DATA, b"", length=2**32 - 1),
        "bad magic": frame(KIND_CONTROL, b"{}", magic=b"XX"),
        "unknown kind": frame(9, b""),
        "truncated header": frame(KIND_CONTROL, hello)[:5],
        "truncated body": frame(KIND_CONTROL, hello)[:20],
        "not json": frame(KIND_CONTROL, b"\xff\xfe{"),
        "json array": frame(KIND_CONTROL, b"[1,2]"),
        "method not allowed": frame(
            KIND_CONTROL,
            json.dumps({"type": "request", "id": 1, "method": "__init__", "args": {}}).encode(),
        ),
        "path in migration id": frame(
            KIND_CONTROL,
            json.dumps(
                {
                    "type": "request",
                    "id": 1,
                    "method": "abort",
                    "args": {"migration_id": "../../../../tmp/x"},
                }
            ).encode(),
        ),
        "garbage stream": frame(
            KIND_CONTROL,
            json.dumps(
                {"type": "request", "id": 1, "method": "load_image", "args": {"image_id": "x"}}
            ).encode(),
        )
        + frame(KIND_DATA, b"\x00" * 100)
        + frame(KIND_END, b""),
    }
    for what, payload in cases.items():
        state_dir = tmp_path / what.replace(" ", "_")
        state_dir.mkdir()
        rc, stderr = run_agent(payload, docker_host, state_dir)
        assert rc in (0, 1, 2), f"{what}: exit {rc}\n{stderr}"
        assert "Traceback" not in stderr, f"{what}:\n{stderr}"
        assert not [p for p in state_dir.rglob("*") if p.is_file()], what
