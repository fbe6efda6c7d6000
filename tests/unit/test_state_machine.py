"""The migration state machine in-process: the real Migration against the real Agent.

The source and the destination are two fake engines (fake_engine.py) whose read-write layers,
volumes and checkpoint images are real files, so capture, streaming and extraction run for
real; the agent serves in a thread on a socketpair (agent_link.py). Fault points
(migrate/core/faults.py) reach every rollback and hand-over branch of a cold migration, each
checked for what DESIGN.md ("Migration state machine") promises: the error class (its exit
code), the source copy's state, what the destination holds and what both journals say.

Host probes that need root or real binaries (CRIU, its CPU check, /proc scans) are
monkeypatched; nothing here needs root, a daemon or the network.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_link import JOIN_TIMEOUT_S, Destination
from fake_engine import FakeEngine

from migrate.checkpoint import criu
from migrate.core.errors import (
    EXIT_FAILED,
    EXIT_IN_DOUBT,
    EXIT_REFUSED,
    InDoubt,
    InjectedFault,
    InternalError,
    MigrateError,
    MigrationFailed,
    NameConflict,
)
from migrate.core.faults import Faults
from migrate.core.journal import Journal, unsettled
from migrate.core.report import Report
from migrate.engines.base import ContainerSpec, Engine
from migrate.source import migration as migration_mod
from migrate.source.migration import Migration, RunOptions
from migrate.source.recover import Settled, pending_for, recover

pytestmark = pytest.mark.unit

NAME = "web"
DEST = "fake://b"
FILES = {
    "app/counter.txt": b"1234\n",
    "etc/app.conf": b"answer = 42\n" * 400,
    "var/empty": b"",
}
MEMORY = b"the counter is at 1234;" * 64
VOLUME, NETWORK = "webdata", "webnet"
# Reached with MIGRATE_FAULTS=source:STEP: each fails the run there, before `commit`.
ROLLBACK_POINTS = (
    "before_precopy",
    "after_precopy",
    "before_pause",
    "after_pause",
    "mid_stream",
    "before_restore",
    "before_commit",
)


@pytest.fixture(autouse=True)
def no_host_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CRIU and the host as a capable, compatible pair would report them."""
    caps = criu.CriuCapabilities("/fake/criu", (4, 2, 0), True, "", "fake")
    monkeypatch.setattr(criu, "find_criu", lambda: "/fake/criu")
    monkeypatch.setattr(criu, "capabilities", lambda binary, probe_features=True: caps)
    monkeypatch.setattr(criu, "cpuinfo_image", lambda binary=None: b"fake cpuinfo")
    monkeypatch.setattr(
        criu, "cpuinfo_compatible", lambda image, binary=None: criu.CpuinfoCheck(True, "")
    )
    monkeypatch.setattr(criu, "has_cap_sys_resource", lambda status=None: True)
    # No CRIU dump of ours can still be running: nothing in /proc to wait for.
    monkeypatch.setattr(criu, "wait_until_unused", lambda path, timeout: [])
    monkeypatch.setenv("MIGRATE_LAZY_RESTORE", "0")
    monkeypatch.delenv("MIGRATE_KEEP_CRIU_LOGS", raising=False)


@dataclass
class Hosts:
    tmp: Path
    src: FakeEngine
    dest: FakeEngine
    destination: Destination
    src_state: Path
    locks: Path
    mark: Path

    def migration(
        self, *faults: str, precopy: bool = True, keep_source: bool = False, dry_run: bool = False
    ) -> Migration:
        opts = RunOptions(
            container=NAME,
            destination=DEST,
            keep_source=keep_source,
            dry_run=dry_run,
            strategy="cold",
            precopy=precopy,
            state_dir=self.src_state,
            lock_dir=self.locks,
            faults=Faults(frozenset(faults), self.mark),
            staging="disk",
            memory_root=self.tmp / "shm",
            bulk="paramiko",
        )
        engine: Engine = self.src
        return Migration(opts, engine, self.destination.connect)

    def recover(self) -> list[Settled]:
        pending = pending_for(NAME, DEST, self.src, self.src_state)
        return recover(
            pending,
            self.src,
            self.destination.connect,
            state_dir=self.src_state,
            lock_dir=self.locks,
        )

    def source_events(self, m: Migration) -> list[str]:
        return [r.event for r in Journal.for_migration("source", m.id, self.src_state).records()]

    def agent_events(self, m: Migration) -> list[str]:
        j = Journal.for_migration("agent", m.id, self.destination.state_dir)
        return [r.event for r in j.records()]

    def source_state(self) -> str:
        c = self.src.by_name(NAME)
        return "gone" if c is None else c.status

    def dest_running(self) -> list[str]:
        return [c.spec.name for c in self.dest.containers.values() if c.status == "running"]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    src, dest = FakeEngine(tmp_path / "a", "a"), FakeEngine(tmp_path / "b", "b")
    src.run(NAME, files=FILES, memory=MEMORY, volume=VOLUME, network=NETWORK)
    destination = Destination(dest, tmp_path / "b-state", tmp_path / "b-staging")
    h = Hosts(
        tmp_path,
        src,
        dest,
        destination,
        tmp_path / "a-state",
        tmp_path / "locks",
        tmp_path / "mark",
    )
    yield h
    destination.join()


def run_stopped_at(
    h: Hosts, step: str, meanwhile: Callable[[], None], **kw: bool
) -> tuple[Migration, Report | BaseException]:
    """Run a migration that stops at ``source:wait:STEP``, do ``meanwhile`` there, let it go
    on; the migration and what its run returned or raised."""
    m = h.migration(f"source:wait:{step}", **kw)
    result: list[Report | BaseException] = []

    def run() -> None:
        try:
            result.append(m.run())
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            result.append(e)

    t = threading.Thread(target=run, name="test-source", daemon=True)
    t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not h.mark.exists():
        assert t.is_alive(), f"the run ended before {step}: {result!r}"
        assert time.monotonic() < deadline, f"the run never reached {step}"
        time.sleep(0.005)
    meanwhile()
    h.mark.unlink()
    t.join(JOIN_TIMEOUT_S)
    assert not t.is_alive(), "the run did not end"
    return m, result[0]


def assert_migrated(h: Hosts, rep: Report, m: Migration, *, kept: bool = False) -> None:
    h.destination.join()
    assert rep.status == "migrated"
    assert rep.source_action == ("stopped" if kept else "removed")
    assert h.source_state() == ("exited" if kept else "gone")
    assert h.dest_running() == [NAME]
    assert len(h.dest.containers) == 1
    moved = h.dest.by_name(NAME)
    assert moved is not None and moved.id == rep.dest_container_id
    assert h.dest.files(moved.id) == FILES
    assert moved.memory == MEMORY
    vol = h.dest.volume(VOLUME)
    assert (
        vol is not None and (Path(vol.mountpoint) / "data.txt").read_bytes() == b"volume content\n"
    )
    assert h.dest.network(NETWORK) is not None
    log = h.dest.log_file(moved.id)
    assert log is not None and b"started" in log.read_bytes()
    assert h.source_events(m)[-1] == "done"
    assert "committed" in h.source_events(m)
    assert h.agent_events(m)[-1] == "committed"
    assert not unsettled(h.src_state)
    _assert_no_leftovers(h, m)


def assert_rolled_back(h: Hosts, m: Migration, err: BaseException) -> None:
    """DESIGN.md: until `commit` is sent every failure rolls back: exit 1, the source copy
    runs again, the destination holds nothing of it; then the same migration can run again."""
    h.destination.join()
    assert isinstance(err, MigrationFailed), err
    assert err.exit_code == EXIT_FAILED
    assert "Rolled back" in err.message
    assert h.source_state() == "running"
    assert h.dest.containers == {}
    assert h.dest.volumes == {}
    assert h.dest.networks == {}
    assert h.source_events(m)[-1] == "rolled_back"
    assert h.agent_events(m)[-1] == "aborted"
    assert not unsettled(h.src_state)
    _assert_no_leftovers(h, m)
    # Nothing is left that would stand in the way: lock, journal, name, volume, network.
    again = h.migration()
    assert_migrated(h, again.run(), again)


def _assert_no_leftovers(h: Hosts, m: Migration) -> None:
    assert not (h.src_state / "staging" / m.id).exists()
    staged = h.destination.staging_root
    assert not staged.exists() or not any(staged.iterdir())
    for c in h.dest.containers.values():
        ckpts = h.dest.checkpoint_dir(c.id, "x").parent
        assert not any(ckpts.iterdir()), "checkpoint images left on the destination"


def test_the_fake_engine_has_every_engine_method_with_its_parameters() -> None:
    """mypy does not read tests/: this keeps the fake in step with the Engine protocol."""
    for name, member in vars(Engine).items():
        if name.startswith("_") or not callable(member):
            continue
        ours = getattr(FakeEngine, name, None)
        assert ours is not None, f"FakeEngine lacks {name}"
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(member).parameters
        ), name


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize("precopy", [True, False], ids=["precopy", "no-precopy"])
def test_migration_moves_the_container(hosts: Hosts, precopy: bool) -> None:
    m = hosts.migration(precopy=precopy)
    rep = m.run()
    assert_migrated(hosts, rep, m)
    assert rep.strategy == "cold"
    assert rep.downtime_s is not None and rep.downtime_s >= 0
    assert (rep.bytes.rootfs_precopy > 0) == precopy


def test_keep_source_leaves_the_source_copy_stopped(hosts: Hosts) -> None:
    m = hosts.migration(keep_source=True)
    assert_migrated(hosts, m.run(), m, kept=True)


def test_dry_run_touches_nothing(hosts: Hosts) -> None:
    m = hosts.migration(dry_run=True)
    assert m.run().status == "dry_run"
    hosts.destination.join()
    assert hosts.source_state() == "running"
    assert hosts.dest.containers == {}
    assert hosts.source_events(m) == []


# --- rollback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "precopy"),
    [(s, True) for s in ROLLBACK_POINTS]
    # Without a pre-copy its two steps are not reached (the test after this one).
    + [(s, False) for s in ROLLBACK_POINTS if "precopy" not in s],
)
def test_a_failure_before_commit_rolls_back(hosts: Hosts, step: str, precopy: bool) -> None:
    m = hosts.migration(f"source:{step}", precopy=precopy)
    with pytest.raises(MigrateError) as e:
        m.run()
    assert e.value.details.get("cause") == InjectedFault.code
    assert_rolled_back(hosts, m, e.value)


def test_without_precopy_the_precopy_points_are_not_reached(hosts: Hosts) -> None:
    m = hosts.migration("source:before_precopy", "source:after_precopy", precopy=False)
    assert_migrated(hosts, m.run(), m)


def test_a_failed_restore_rolls_back(hosts: Hosts) -> None:
    m = hosts.migration("agent:restore_fail")
    with pytest.raises(MigrateError) as e:
        m.run()
    assert e.value.details.get("cause") == "criu.restore_failed"
    assert "restoring" in hosts.agent_events(m)
    assert_rolled_back(hosts, m, e.value)


def test_a_name_taken_on_the_destination_is_refused_before_anything_moves(hosts: Hosts) -> None:
    hosts.dest.run(NAME, files={"other": b"x"}, memory=b"other")
    m = hosts.migration()
    with pytest.raises(NameConflict) as e:
        m.run()
    hosts.destination.join()
    assert e.value.exit_code == EXIT_REFUSED
    assert hosts.source_state() == "running"
    assert hosts.dest_running() == [NAME] and len(hosts.dest.containers) == 1
    assert hosts.source_events(m) == []
    assert hosts.agent_events(m) == []


def test_a_create_that_fails_rolls_back_without_touching_the_other_container(
    hosts: Hosts,
) -> None:
    """agent:skip_name_check lets the name conflict reach `prepare`: the rollback removes the
    volume and network it made, never the container that had the name."""
    other = hosts.dest.run(NAME, files={"other": b"x"}, memory=b"other")
    m = hosts.migration("agent:skip_name_check")
    with pytest.raises(MigrationFailed) as e:
        m.run()
    hosts.destination.join()
    assert e.value.details.get("cause") == "engine.error"
    assert hosts.source_state() == "running"
    assert list(hosts.dest.containers) == [other]
    assert hosts.dest.containers[other].status == "running"
    assert hosts.dest.volumes == {} and hosts.dest.networks == {}
    assert hosts.source_events(m)[-1] == "rolled_back"
    assert hosts.agent_events(m)[-1] == "aborted"
    assert not unsettled(hosts.src_state)


def test_a_destination_copy_that_died_is_not_committed(hosts: Hosts) -> None:
    """The agent refuses `commit` for a copy that no longer runs (its daemon restarted):
    still before the point of no return, so the run rolls back."""
    m, err = run_stopped_at(hosts, "before_commit", lambda: hosts.dest.crash(NAME))
    assert isinstance(err, MigrationFailed)
    assert err.details.get("cause") == "criu.restore_failed"
    assert_rolled_back(hosts, m, err)


# --- a lost link ------------------------------------------------------------------------------


def test_a_link_lost_before_restored_rolls_back(hosts: Hosts) -> None:
    m, err = run_stopped_at(hosts, "before_restore", hosts.destination.cut)
    assert isinstance(err, MigrationFailed)
    assert err.details.get("cause") == "protocol.connection_lost"
    # The agent rolled back by itself; the source's abort came over a second session.
    assert len(hosts.destination.sessions) >= 2
    assert_rolled_back(hosts, m, err)


def test_a_link_lost_after_restored_is_in_doubt_until_recover(hosts: Hosts) -> None:
    """`commit` never reached the agent: the source keeps its copy paused (exit 4); the agent
    rolled back; `migrate recover` reads that from its journal and resumes the source."""
    m, err = run_stopped_at(hosts, "before_commit", hosts.destination.cut)
    assert isinstance(err, InDoubt) and err.exit_code == EXIT_IN_DOUBT
    hosts.destination.join()
    assert hosts.source_state() == "paused"
    assert hosts.source_events(m)[-2:] == ["committing", "in_doubt"]
    assert hosts.dest.containers == {}
    assert hosts.agent_events(m)[-1] == "aborted"
    # An unsettled migration refuses the next run of that container, touching nothing.
    with pytest.raises(InDoubt, match="not settled"):
        hosts.migration().run()
    assert hosts.source_state() == "paused"
    # Recover needs the destination's journal: unreachable, nothing changes.
    hosts.destination.reachable = False
    with pytest.raises(InDoubt):
        hosts.recover()
    assert hosts.source_state() == "paused"
    hosts.destination.reachable = True
    (settled,) = hosts.recover()
    assert settled.outcome == "rolled_back"
    assert settled.agent_last == "aborted"
    hosts.destination.join()
    assert hosts.source_state() == "running"
    assert hosts.dest.containers == {}
    assert hosts.source_events(m)[-1] == "recovered"
    assert not unsettled(hosts.src_state)
    assert hosts.recover() == []


@pytest.mark.parametrize("keep_source", [False, True], ids=["remove", "keep-source"])
def test_a_lost_answer_to_commit_is_settled_as_committed(hosts: Hosts, keep_source: bool) -> None:
    """The agent journalled `committed` and its answer was lost: in doubt (exit 4), the
    source paused, the destination copy running; recover finishes the commit."""
    m = hosts.migration(keep_source=keep_source)
    # The agent's first answer after its journal says `committed` is the one to `commit`.
    hosts.destination.agent_cut_when = lambda _: hosts.agent_events(m)[-1:] == ["committed"]
    with pytest.raises(InDoubt) as e:
        m.run()
    hosts.destination.agent_cut_when = None
    assert e.value.exit_code == EXIT_IN_DOUBT
    hosts.destination.join()
    assert hosts.source_state() == "paused"
    assert hosts.dest_running() == [NAME] and len(hosts.dest.containers) == 1
    assert hosts.agent_events(m)[-1] == "committed"
    assert hosts.source_events(m)[-1] == "in_doubt"
    (settled,) = hosts.recover()
    assert settled.outcome == "committed"
    hosts.destination.join()
    assert hosts.source_state() == ("exited" if keep_source else "gone")
    assert hosts.dest_running() == [NAME] and len(hosts.dest.containers) == 1
    assert hosts.source_events(m)[-1] == "recovered"
    assert not unsettled(hosts.src_state)


def test_a_source_failure_after_commit_is_settled_as_committed(hosts: Hosts) -> None:
    """Past the point of no return nothing rolls back: the source copy stays paused (never
    two running copies) and recover retires it."""
    m = hosts.migration("source:after_commit")
    with pytest.raises(InjectedFault):
        m.run()
    hosts.destination.join()
    assert hosts.source_state() == "paused"
    assert hosts.dest_running() == [NAME]
    assert hosts.source_events(m)[-1] == "committed"
    assert hosts.agent_events(m)[-1] == "committed"
    (settled,) = hosts.recover()
    assert settled.outcome == "committed"
    assert hosts.source_state() == "gone"
    assert hosts.dest_running() == [NAME] and len(hosts.dest.containers) == 1


@pytest.mark.parametrize(
    "point", ["agent:exit_mid_stream", "agent:exit_before_commit", "agent:exit_after_commit"]
)
def test_agent_exit_points(point: str) -> None:
    pytest.skip(
        f"{point} ends the agent's process with os._exit, which here would end the test run: "
        "tests/e2e covers it (docs/fault-matrix.md, row 'agent exits itself'); the lost link "
        "tests above reach the same source-side branches"
    )


def test_a_bug_before_commit_rolls_back(hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a MigrateError (a bug of ours) must not leave the source paused
    and a copy on the destination: it rolls back like any failure, the bug named."""
    real = migration_mod.freeze_and_move

    def restored_then_bug(m: Migration, spec: ContainerSpec) -> None:
        real(m, spec)  # the destination copy runs, the source is paused
        raise RuntimeError("a bug")

    monkeypatch.setattr(migration_mod, "freeze_and_move", restored_then_bug)
    m = hosts.migration()
    with pytest.raises(MigrateError) as e:
        m.run()
    assert e.value.details.get("cause") == InternalError.code
    assert "RuntimeError: a bug" in e.value.message
    monkeypatch.undo()
    assert_rolled_back(hosts, m, e.value)


def test_a_bug_after_commit_is_in_doubt_until_recover(
    hosts: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the point of no return a bug rolls nothing back: in doubt (exit 4), the source copy
    paused, and recover retires it."""

    def bug(m: Migration) -> None:
        raise RuntimeError("a bug after commit")

    monkeypatch.setattr(migration_mod, "bye", bug)
    m = hosts.migration()
    with pytest.raises(InDoubt) as e:
        m.run()
    assert "RuntimeError: a bug after commit" in e.value.message
    hosts.destination.join()
    assert hosts.source_state() == "paused"
    assert hosts.dest_running() == [NAME]
    (settled,) = hosts.recover()
    assert settled.outcome == "committed"
    assert hosts.source_state() == "gone"
