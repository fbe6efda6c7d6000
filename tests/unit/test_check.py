"""`migrate check`: the individual checks, readiness, and the real CLI with fake/real CRIU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from migrate.checkpoint import criu
from migrate.core.errors import EXIT_REFUSED, EXIT_USAGE, EngineUnavailable, Unsupported
from migrate.engines.base import EngineInfo
from migrate.engines.docker import readiness
from migrate.engines.docker.readiness import DockerReadiness
from migrate.source import criu_checks, dest_checks, host_checks
from migrate.source.check import run_checks
from migrate.source.check_result import CheckReport, CheckResult
from migrate.wire.results import CpuinfoResult
from migrate.wire.session import parse_hello

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MIGRATE = ROOT / ".venv" / "bin" / "migrate"
# Nothing listens here, so the Docker rows fail the same way on every machine.
NO_DOCKER = "unix:///nonexistent/migrate-test/docker.sock"

REAL_CRIU = shutil.which("criu") or next(
    (p for p in ("/usr/local/sbin/criu", "/usr/sbin/criu") if os.access(p, os.X_OK)), None
)
needs_real_criu = pytest.mark.skipif(
    REAL_CRIU is None
    or os.geteuid() != 0
    or (criu.criu_version(REAL_CRIU) or (0, 0, 0)) < criu.MIN_CRIU,
    reason="needs root and CRIU >= 4.2 installed",
)


def engine_info(**over: Any) -> EngineInfo:
    base: dict[str, Any] = {
        "engine": "docker",
        "version": "20.10.24",
        "api_version": "1.41",
        "checkpoint_enabled": True,
        "storage_driver": "overlay2",
        "data_root": "/var/lib/docker",
        "runtime": "runc",
        "runc_version": "1.1.5",
        "cgroup_version": "1",
        "kernel": "6.18.0",
        "os": "Debian GNU/Linux 12",
        "mem_total": 1 << 30,
        "host_name": "a",
    }
    base.update(over)
    # As the Docker engine derives it: the read-write layer is taken from overlay2 only.
    base.setdefault("rootfs_supported", base["storage_driver"] == "overlay2")
    return EngineInfo(**base)


def caps(**over: Any) -> criu.CriuCapabilities:
    base: dict[str, Any] = {
        "path": "/usr/local/sbin/criu",
        "version": (4, 2, 1),
        "check_ok": True,
        "check_output": "Looks good.",
        "check_method": "pycriu",
        "features": MappingProxyType({"lazy_pages": True, "mem_dirty_track": False}),
    }
    base.update(over)
    return criu.CriuCapabilities(**base)


def rows(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


# --- individual checks -------------------------------------------------------------------


def test_criu_ok() -> None:
    r = rows(criu_checks.check_criu(caps()))
    assert r["criu"].ok and "4.2.1" in r["criu"].value
    assert r["criu_check"].ok and "pycriu" in r["criu_check"].value


def test_criu_too_old() -> None:
    r = rows(criu_checks.check_criu(caps(version=(3, 17, 1))))["criu"]
    assert not r.ok and r.required and r.status == "fail"
    assert "3.17.1" in r.value
    assert "too old" in r.problem and "4.2" in r.problem
    assert "make setup" in r.fix


def test_criu_4_1_is_too_old() -> None:
    assert not rows(criu_checks.check_criu(caps(version=(4, 1, 1))))["criu"].ok


def test_criu_missing() -> None:
    r = rows(criu_checks.check_criu(caps(path=None, version=None, check_ok=False)))
    assert not r["criu"].ok and "criu not found" in r["criu"].problem
    assert "make setup" in r["criu"].fix
    assert not r["criu_check"].ok


def test_criu_check_failure_carries_output() -> None:
    c = caps(check_ok=False, check_output="vdso: Unexpected rt vDSO area bounds")
    r = rows(criu_checks.check_criu(c))["criu_check"]
    assert not r.ok and r.required
    assert "vDSO" in r.problem


def test_features_are_warnings() -> None:
    r = rows(criu_checks.check_criu_features(caps(features=MappingProxyType({}))))
    assert r["lazy_pages"].status == "warn"
    assert r["mem_dirty_track"].status == "warn"
    assert "no iterative pre-copy" in r["mem_dirty_track"].problem
    r = rows(criu_checks.check_criu_features(caps()))
    assert r["lazy_pages"].ok and not r["mem_dirty_track"].ok


def test_engine_rows() -> None:
    r = rows(readiness.check_engine(engine_info(), None))
    assert all(x.ok for x in r.values())
    r = rows(readiness.check_engine(engine_info(checkpoint_enabled=False), None))
    assert not r["docker_experimental"].ok and r["docker_experimental"].required
    assert '"experimental": true' in r["docker_experimental"].fix
    assert "--experimental" in r["docker_experimental"].fix
    r = rows(readiness.check_engine(engine_info(storage_driver="vfs"), None))
    assert not r["storage_driver"].ok and "vfs" in r["storage_driver"].problem


def test_live_restore_is_reported_never_required() -> None:
    assert "live_restore" not in rows(readiness.check_engine(engine_info(), None))  # unknown
    on = rows(readiness.check_engine(engine_info(live_restore=True), None))["live_restore"]
    assert on.ok and on.value == "on"
    off = rows(readiness.check_engine(engine_info(live_restore=False), None))["live_restore"]
    assert off.status == "warn" and off.value == "off"
    assert "stops every container here, migrated ones included" in off.problem
    assert '"live-restore": true' in off.fix
    dest = dest_rows({**HELLO, "engine": {**HELLO["engine"], "live_restore": False}})
    assert dest["live_restore"].status == "warn"
    assert "live_restore" not in dest_rows(HELLO)  # an older agent does not say


def test_engine_unreachable() -> None:
    err = EngineUnavailable("cannot reach the Docker daemon at x", hint="start dockerd")
    r = rows(readiness.check_engine(None, err))
    assert not r["docker"].ok and r["docker"].fix == "start dockerd"
    assert not r["docker_experimental"].ok and not r["storage_driver"].ok


def test_runc(tmp_path: Path) -> None:
    runc = tmp_path / "runc"
    runc.write_text('#!/bin/sh\necho "runc version 1.1.5+ds1"\necho "spec: 1.0.2-dev"\n')
    runc.chmod(0o755)
    r = readiness.check_runc(str(runc), engine_info())
    assert r.ok and "1.1.5+ds1" in r.value
    assert not readiness.check_runc(None, engine_info()).ok
    assert not readiness.check_runc(str(runc), engine_info(runtime="crun")).ok


def test_iptables() -> None:
    assert host_checks.check_iptables("/usr/sbin/iptables-restore").ok
    r = host_checks.check_iptables(None)
    assert not r.ok and r.required and "apt-get install iptables" in r.fix


def test_disk(tmp_path: Path) -> None:
    assert host_checks.check_disk("d", tmp_path / "not" / "yet", 1, what="x").ok
    r = host_checks.check_disk("d", tmp_path, 1 << 62, what="x")
    assert r.status == "warn" and "free" in r.value
    assert host_checks.check_disk("d", None, 1, what="x").status == "warn"


def test_pipe_max_size() -> None:
    assert criu_checks.check_pipe_max_size(4 << 20, 0).ok
    r = criu_checks.check_pipe_max_size(1 << 20, 0)
    assert r.status == "warn" and "4194304" in r.fix
    # CAP_SYS_RESOURCE lifts the limit.
    assert criu_checks.check_pipe_max_size(1 << 20, 1 << criu_checks.CAP_SYS_RESOURCE).ok


def test_cap_sys_resource() -> None:
    assert criu_checks.check_cap_sys_resource(0x1FFFFFFFFFF).ok
    r = criu_checks.check_cap_sys_resource(0x1FFFEFFFFFF)  # the sandbox: everything but bit 24
    assert r.status == "warn" and "non-root" in r.problem
    assert criu_checks.check_cap_sys_resource(None).status == "warn"


def test_cap_eff_parsing(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n")
    assert criu_checks.cap_eff(status) == 0x1FFFEFFFFFF
    assert criu_checks.cap_eff(tmp_path / "missing") is None


# --- report ------------------------------------------------------------------------------


def test_report_ready_ignores_warnings() -> None:
    rep = CheckReport(
        (
            CheckResult("a", True, "1"),
            CheckResult("b", False, "2", problem="p", required=False),
        )
    )
    assert rep.ready and not rep.failures and rep.warnings[0].name == "b"
    rep = CheckReport(rep.results + (CheckResult("c", False, "3", problem="p"),))
    assert not rep.ready and rep.failures[0].name == "c"
    j = rep.to_json()
    assert j["ready"] is False
    assert [c["status"] for c in j["checks"]] == ["ok", "warn", "fail"]
    assert rep.get("c") is not None and rep.get("zzz") is None


def test_run_checks_with_failing_provider(tmp_path: Path) -> None:
    def boom() -> EngineInfo:
        raise RuntimeError("socket exploded")

    rep = run_checks(boom, DockerReadiness(), criu_binary=None, staging_dir=tmp_path)
    assert not rep.ready
    docker = rep.get("docker")
    assert docker is not None and not docker.ok and "socket exploded" in docker.problem
    names = [r.name for r in rep.results]
    assert len(names) == len(set(names))
    for required in (
        "criu",
        "criu_check",
        "docker",
        "docker_experimental",
        "storage_driver",
        "runc",
        "iptables_restore",
    ):
        assert required in names


def test_run_checks_uses_given_engine_info(tmp_path: Path) -> None:
    rep = run_checks(
        lambda: engine_info(data_root=str(tmp_path)), DockerReadiness(), staging_dir=tmp_path
    )
    assert rep.get("docker_experimental").ok  # type: ignore[union-attr]
    assert str(tmp_path) in rep.get("disk_data_root").value  # type: ignore[union-attr]


HELLO = {
    "software": "0.1.0",
    "protocol": 1,
    "kernel": "6.1",
    "hostname": "b",
    "criu_version": [4, 2, 1],
    "criu_ok": True,
    "methods": [],
    "engine": {
        "engine": "docker",
        "version": "20.10.24",
        "experimental": True,
        "storage_driver": "overlay2",
        "mem_total": 1 << 34,
    },
    "free_disk": 50 << 30,
}


def dest_rows(
    hello: dict[str, Any],
    cpu: dict[str, Any] | None = None,
    local: tuple[int, int, int] | None = (4, 2, 1),
) -> dict[str, CheckResult]:
    rows = dest_checks.destination_results(
        parse_hello(hello),
        CpuinfoResult.model_validate(cpu or {"ok": True, "output": ""}),
        local,
        DockerReadiness(),
    )
    return {r.name: r for r in rows}


def test_destination_ready() -> None:
    rows = dest_rows(HELLO)
    assert all(r.ok for r in rows.values()), rows
    assert {
        "agent",
        "criu",
        "criu_check",
        "docker",
        "docker_experimental",
        "storage_driver",
        "disk_data_root",
        "cpu",
    } <= set(rows)


def test_destination_problems_each_have_a_fix() -> None:
    assert not dest_rows({**HELLO, "criu_version": [4, 1, 0]})["criu"].ok
    older = dest_rows({**HELLO, "criu_version": [4, 2, 0]})["criu"]
    assert not older.ok and "older than this host's 4.2.1" in older.problem
    assert dest_rows({**HELLO, "criu_version": None})["criu"].value == "not found"
    off = dest_rows({**HELLO, "engine": {**HELLO["engine"], "experimental": False}})
    assert not off["docker_experimental"].ok and "experimental" in off["docker_experimental"].fix
    gone = dest_rows(
        {k: v for k, v in HELLO.items() if k != "engine"}
        | {"engine_error": {"code": "precheck.engine", "message": "no socket", "hint": "start it"}}
    )
    assert not gone["docker"].ok and gone["docker"].fix == "start it"
    cpu = dest_rows(HELLO, {"ok": False, "output": "cpuinfo: fpu_xfeatures_mask mismatch"})["cpu"]
    assert not cpu.ok and "fpu_xfeatures_mask" in cpu.problem and cpu.required
    low = dest_rows({**HELLO, "free_disk": 1 << 20})["disk_data_root"]
    assert not low.ok and not low.required
    for rows in (off, gone):
        assert all(r.fix for r in rows.values() if not r.ok)


# --- the real CLI ------------------------------------------------------------------------


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None, path_prefix: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != criu.ENV_CRIU}
    env["DOCKER_HOST"] = NO_DOCKER
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env.get('PATH', '')}"
    env.update(env_extra or {})
    exe = [str(MIGRATE)] if MIGRATE.exists() else [sys.executable, "-m", "migrate"]
    return subprocess.run(
        [*exe, "check", *args], check=False, capture_output=True, text=True, env=env, timeout=120
    )


def json_rows(p: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    data = json.loads(p.stdout)  # stdout holds the JSON and nothing else
    assert isinstance(data["ready"], bool)
    return {c["name"]: c for c in data["checks"]}


def test_cli_fake_old_criu_refused(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text('#!/bin/sh\necho "Version: 3.17.1"\n')
    fake.chmod(0o755)
    p = run_cli("--json", path_prefix=tmp_path)
    assert p.returncode == EXIT_REFUSED, p.stderr
    r = json_rows(p)["criu"]
    assert r["ok"] is False and r["status"] == "fail" and r["required"] is True
    assert "3.17.1" in r["value"] and str(fake) in r["value"]
    assert "too old" in r["problem"]
    assert "make setup" in r["fix"]


def test_cli_fake_old_criu_table(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text('#!/bin/sh\necho "Version: 3.17.1"\n')
    fake.chmod(0o755)
    p = run_cli(path_prefix=tmp_path, env_extra={"COLUMNS": "200"})
    assert p.returncode == EXIT_REFUSED
    assert "too old" in p.stdout and "make setup" in p.stdout
    assert "\u2717" in p.stdout and "not ready" in p.stdout


def test_cli_criu_absent(tmp_path: Path) -> None:
    p = run_cli("--json", env_extra={criu.ENV_CRIU: str(tmp_path / "no" / "criu")})
    assert p.returncode == EXIT_REFUSED, p.stderr
    r = json_rows(p)
    assert r["criu"]["ok"] is False and "criu not found" in r["criu"]["problem"]
    assert "make setup" in r["criu"]["fix"]
    assert r["criu_check"]["ok"] is False


def test_cli_docker_unreachable_is_reported() -> None:
    p = run_cli("--json")
    assert p.returncode == EXIT_REFUSED
    r = json_rows(p)["docker"]
    assert r["ok"] is False and "DOCKER_HOST" in r["fix"]


@needs_real_criu
def test_cli_real_criu_rows_ok() -> None:
    p = run_cli("--json")
    r = json_rows(p)
    assert r["criu"]["ok"] is True, r["criu"]
    assert r["criu_check"]["ok"] is True, r["criu_check"]
    # Docker is unreachable on purpose: not ready, but not because of CRIU.
    assert p.returncode == EXIT_REFUSED
    assert not {n for n, c in r.items() if c["status"] == "fail"} & {"criu", "criu_check"}


def test_cli_to_bad_destination_is_usage() -> None:
    p = run_cli("--to", "ftp://host-b", "--json")
    assert p.returncode == EXIT_USAGE, p.stderr
    data = json.loads(p.stdout)
    assert data["error"]["code"].startswith("usage")


def test_runc_criu_conf_needs_file_locks() -> None:
    assert criu_checks.check_runc_criu_conf("file-locks\n").ok
    assert criu_checks.check_runc_criu_conf("tcp-established\nfile-locks\n").ok
    for text in (None, "", "tcp-established\n"):
        r = criu_checks.check_runc_criu_conf(text)
        assert not r.ok and not r.required
        assert "file locks" in r.problem and "file-locks" in r.fix


MOUNTS_TEXT = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /run/lock tmpfs rw 0 0
proc /proc proc rw 0 0
"""


def test_run_on_the_root_ext4_means_no_kdat_cache() -> None:
    fstype = criu_checks.mount_fstype(Path("/run"), MOUNTS_TEXT)
    assert fstype == "ext4"  # /run/lock is a tmpfs of its own, /run is not
    r = criu_checks.check_criu_kdat_cache(fstype)
    assert r.name == "criu_kdat_cache" and r.status == "warn" and "tmpfs" in r.fix


def test_run_as_tmpfs_caches_criu_kernel_probe() -> None:
    text = MOUNTS_TEXT + "tmpfs /run tmpfs rw,nosuid 0 0\n"
    assert criu_checks.mount_fstype(Path("/run"), text) == "tmpfs"
    assert criu_checks.check_criu_kdat_cache("tmpfs").status == "ok"
    assert criu_checks.mount_fstype(Path("/run"), "") is None
    assert criu_checks.check_criu_kdat_cache(None).status == "warn"


def test_the_engine_refuses_a_daemon_it_cannot_checkpoint_with_with_the_fix() -> None:
    readiness.refuse_unready(engine_info(), destination=True)  # ready: nothing raised
    with pytest.raises(EngineUnavailable, match="source's Docker daemon") as e:
        readiness.refuse_unready(engine_info(checkpoint_enabled=False), destination=False)
    assert "daemon.json" in e.value.hint
    with pytest.raises(EngineUnavailable, match="destination's Docker daemon"):
        readiness.refuse_unready(engine_info(checkpoint_enabled=False), destination=True)
    vfs = engine_info(storage_driver="vfs")
    readiness.refuse_unready(vfs, destination=False)  # the source reads its layer otherwise
    with pytest.raises(Unsupported, match="'vfs' storage driver"):
        readiness.refuse_unready(vfs, destination=True)


def test_a_destination_daemon_is_judged_from_what_its_agent_said() -> None:
    rows = {r.name: r for r in DockerReadiness().remote_rows(engine_info(), None)}
    assert rows["docker"].ok and rows["docker"].value.startswith("docker ")
    assert rows["docker_experimental"].ok
    (down,) = DockerReadiness().remote_rows(None, None)
    assert (down.name, down.ok) == ("docker", False)
    assert "start dockerd" in down.fix
