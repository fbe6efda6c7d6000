"""Docker engine: the Engine protocol (engines/base.py) mapped onto docker-py.

Checkpoints are taken by invoking runc directly on the paused container (runc.py). The images
are restored through Docker (`start?checkpoint=NAME`), which keeps Docker's view of the
destination container consistent. The JSON shapes are in spec.py, runc's host-wide CRIU
configuration in runc_conf.py, containerd's leftovers in containerd.py, /proc in procscan.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from migrate.checkpoint.criu import log_tail
from migrate.checkpoint.postcopy import PageServer
from migrate.core.errors import (
    ContainerNotFound,
    EngineError,
    EngineUnavailable,
    NameConflict,
    RestoreFailed,
)
from migrate.engines.base import (
    ContainerSpec,
    ContainerState,
    EngineInfo,
    ExecResult,
    LazyRestore,
    NetworkInfo,
    ProcessInfo,
    VolumeInfo,
)
from migrate.engines.docker import containerd, procscan, readiness, runc, runc_conf
from migrate.engines.docker.criu_log import LogHolder, criu_hint
from migrate.engines.docker.objects import DockerObjects
from migrate.engines.docker.spec import (
    BUILTIN_NETWORKS,
    anonymous_volume,
    create_request,
    network_movable,
    shares_network_namespace,
    spec_from_inspect,
    user_networks,
    volume_movable,
)

log = logging.getLogger(__name__)

# How long Docker API calls may take. Restores of large checkpoints go through containerd's
# content store and can take seconds per GB.
API_TIMEOUT = 300
_EXEC_TAIL = 4096


class DockerEngine(DockerObjects):
    name = "docker"

    def __init__(self, base_url: str | None = None, *, timeout: int = API_TIMEOUT) -> None:
        try:
            if base_url:
                self.client = docker.DockerClient(base_url=base_url, timeout=timeout)
            else:
                self.client = docker.from_env(timeout=timeout)
            self.api = self.client.api
            self.api.ping()
        except (docker.errors.DockerException, requests.RequestException) as e:
            where = base_url or os.environ.get("DOCKER_HOST") or "the default socket"
            raise EngineUnavailable(
                f"cannot reach the Docker daemon at {where}: {e}",
                hint="start dockerd (with --experimental), or point DOCKER_HOST at its socket",
            ) from None
        self._info: dict[str, Any] | None = None

    # --- daemon ---------------------------------------------------------------------------

    def _raw_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.api.info()
        return self._info

    def refuse_unready(self, info: EngineInfo, *, destination: bool) -> None:
        readiness.refuse_unready(info, destination=destination)

    def info(self) -> EngineInfo:
        i = self._raw_info()
        v = self.api.version()
        runc = ""
        for comp in v.get("Components") or []:
            if comp.get("Name") == "runc":
                runc = str(comp.get("Version", ""))
        return EngineInfo(
            engine="docker",
            version=str(v.get("Version", "")),
            api_version=str(v.get("ApiVersion", "")),
            checkpoint_enabled=bool(v.get("Experimental", i.get("ExperimentalBuild", False))),
            storage_driver=str(i.get("Driver", "")),
            rootfs_supported=i.get("Driver") == "overlay2",
            data_root=str(i.get("DockerRootDir", "")),
            runtime=str(i.get("DefaultRuntime", "")),
            runc_version=runc,
            cgroup_version=str(i.get("CgroupVersion", "")),
            kernel=str(i.get("KernelVersion", platform.release())),
            os=str(i.get("OperatingSystem", "")),
            mem_total=int(i.get("MemTotal", 0) or 0),
            host_name=str(i.get("Name", "")),
            live_restore=bool(i.get("LiveRestoreEnabled", False)),
        )

    @property
    def data_root(self) -> Path:
        return Path(str(self._raw_info().get("DockerRootDir", "/var/lib/docker")))

    # --- what moves with a container (spec.py) -------------------------------------------

    def shares_network_namespace(self, spec: ContainerSpec) -> bool:
        return shares_network_namespace(spec.network_mode)

    def user_networks(self, spec: ContainerSpec) -> list[str]:
        return user_networks(spec)

    def network_movable(self, net: NetworkInfo) -> bool:
        return network_movable(net)

    def volume_movable(self, vol: VolumeInfo) -> bool:
        return volume_movable(vol)

    def anonymous_volume(self, name: str) -> bool:
        return anonymous_volume(name)

    # --- containers -----------------------------------------------------------------------

    def _inspect(self, ref: str) -> dict[str, Any]:
        try:
            return dict(self.api.inspect_container(ref))
        except docker.errors.NotFound:
            raise ContainerNotFound(
                f"no container {ref!r} on this host",
                hint="check the name with `docker ps`; DOCKER_HOST selects the daemon",
            ) from None
        except docker.errors.APIError as e:
            raise EngineError(f"docker inspect {ref}: {e.explanation or e}") from None

    def exists(self, ref: str) -> bool:
        try:
            self.api.inspect_container(ref)
            return True
        except docker.errors.NotFound:
            return False

    def state(self, ref: str) -> ContainerState:
        c = self._inspect(ref)
        s = c.get("State") or {}
        return ContainerState(
            id=c["Id"],
            name=str(c.get("Name", "")).lstrip("/"),
            status=str(s.get("Status", "")),
            running=bool(s.get("Running")),
            paused=bool(s.get("Paused")),
            pid=int(s.get("Pid") or 0),
            upper_dir=self._upper_dir(c),
        )

    def _upper_dir(self, c: Mapping[str, Any]) -> str:
        gd = c.get("GraphDriver") or {}
        data = gd.get("Data") or {}
        if gd.get("Name") == "overlay2" and data.get("UpperDir"):
            return str(data["UpperDir"])
        # Docker 29+'s containerd image store keeps the RW layer elsewhere: the root mount's
        # upperdir= option finds it either way (PLATFORM.md).
        pid = int((c.get("State") or {}).get("Pid") or 0)
        return procscan.root_upperdir(pid) if pid else ""

    def spec(self, ref: str) -> ContainerSpec:
        return spec_from_inspect(self._inspect(ref))

    def create(
        self,
        spec: ContainerSpec,
        name: str,
        image: str | None = None,
        *,
        isolated: bool = False,
        labels: Mapping[str, str] | None = None,
        volume_names: Mapping[str, str] | None = None,
        keep_volume_names: bool = False,
    ) -> str:
        """Create a container that matches ``spec`` (not started). Returns its id.

        ``isolated`` (drills): network mode none, no published ports, no links, restart policy
        no, so the copy can neither be reached nor answer in place of the original.
        ``labels`` are added to the container's own. ``volume_names`` maps named volumes to
        the names to use instead (a drill copy gets its own volumes). ``keep_volume_names``
        (migrate run): anonymous volumes keep their names too, instead of Docker making new ones.
        """
        req = create_request(
            spec,
            image,
            isolated=isolated,
            labels=labels,
            volume_names=volume_names,
            keep_volume_names=keep_volume_names,
            user_subnet=self._user_subnet,
        )
        try:
            res = self.api.create_container_from_config(req.body, name=name)
        except docker.errors.APIError as e:
            if e.status_code == 409:
                raise NameConflict(
                    f"a container named {name!r} already exists on the destination",
                    hint="remove it there, or choose another name with --name",
                ) from None
            raise EngineError(f"docker create: {e.explanation or e}") from None
        cid = str(res["Id"])
        if not isolated:
            # The create API takes one network; the others are connected before the start,
            # so the restored processes find every interface (and address) they had.
            try:
                self._connect_extra_networks(cid, req.network_mode, req.endpoints)
            except EngineError:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_container(cid, force=True, v=False)
                raise
        return cid

    def _connect_extra_networks(self, cid: str, primary: str, endpoints: Mapping[str, Any]) -> None:
        for net, ep in sorted(endpoints.items()):
            if net == primary or net in BUILTIN_NETWORKS:
                continue
            ipam = dict(ep.get("IPAMConfig") or {})
            if ipam and not self._user_subnet(net):
                ipam = {}
            try:
                self.api.connect_container_to_network(
                    cid,
                    net,
                    aliases=list(ep.get("Aliases") or []) or None,
                    ipv4_address=ipam.get("IPv4Address") or None,
                    ipv6_address=ipam.get("IPv6Address") or None,
                )
            except docker.errors.APIError as e:
                raise EngineError(f"docker network connect {net}: {e.explanation or e}") from None

    def pause(self, ref: str) -> None:
        self._call("pause", self.api.pause, ref)

    def unpause(self, ref: str) -> None:
        try:
            self.api.unpause(ref)
            return
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "not paused" not in str(e.explanation or e):
                raise EngineError(f"docker unpause {ref}: {e.explanation or e}") from None
            # A CRIU dump that was interrupted (its process killed) thaws the tasks behind
            # Docker's back: runc says running, Docker still says paused and refuses to
            # unpause. Freeze through runc so both agree, then unpause through Docker.
            log.warning("docker and runc disagree on %s being paused: re-syncing", ref)
            self._runc_pause(ref)
        self._call("unpause", self.api.unpause, ref)

    def _runc_pause(self, ref: str) -> None:
        runc.pause(self.state(ref))

    def ensure_frozen(self, ref: str) -> None:
        """Make sure a container Docker sees as paused is frozen in fact (a CRIU dump that
        ended abnormally may have thawed it behind Docker's back)."""
        st = self.state(ref)
        if not st.paused or not st.pid:
            return
        if runc.is_frozen(st):
            return
        log.warning("%s was thawed behind Docker's back: freezing it again", st.name)
        self._runc_pause(ref)

    def running_containers(self, labels: Mapping[str, str] | None = None) -> list[str]:
        """Names of the running (not paused) containers, optionally only those carrying every
        label in ``labels``."""
        filters: dict[str, Any] = {"status": "running"}
        if labels:
            filters["label"] = [f"{k}={v}" for k, v in labels.items()]
        try:
            found = self.api.containers(filters=filters)
        except docker.errors.APIError as e:
            raise EngineError(f"docker ps: {e.explanation or e}") from None
        names = []
        for c in found:
            first = (c.get("Names") or [c.get("Id", "")])[0]
            names.append(str(first).lstrip("/"))
        return sorted(names)

    def memory_usage(self, ref: str) -> int:
        """Bytes of memory the container uses now (cgroup usage minus page cache), 0 if
        unknown. One-shot stats: no second sample, so it answers at once."""
        try:
            st = self.api.stats(ref, stream=False, one_shot=True)
        except (docker.errors.APIError, TypeError):
            return 0
        mem = st.get("memory_stats") or {}
        usage = int(mem.get("usage") or 0)
        stats = mem.get("stats") or {}
        cache = int(stats.get("inactive_file") or stats.get("cache") or 0)
        return max(usage - cache, 0)

    def kill(self, ref: str) -> None:
        # SIGKILL works on a paused container and the tasks die as they thaw: they never run.
        self._call("kill", self.api.kill, ref)

    def remove(self, ref: str, *, force: bool = True) -> None:
        try:
            self.api.remove_container(ref, force=force, v=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise EngineError(f"docker rm {ref}: {e.explanation or e}") from None

    def _call(self, what: str, fn: Any, ref: str) -> None:
        try:
            fn(ref)
        except docker.errors.NotFound:
            raise ContainerNotFound(f"container {ref!r} disappeared during {what}") from None
        except docker.errors.APIError as e:
            raise EngineError(f"docker {what} {ref}: {e.explanation or e}") from None

    def exec_sessions(self, ref: str) -> list[str]:
        """Command lines of `docker exec` processes still running in the container."""
        c = self._inspect(ref)
        out = []
        for eid in c.get("ExecIDs") or []:
            try:
                e = self.api.exec_inspect(eid)
            except docker.errors.APIError:
                continue
            if e.get("Running"):
                pc = e.get("ProcessConfig") or {}
                out.append(
                    " ".join([str(pc.get("entrypoint", ""))] + list(pc.get("arguments") or []))
                )
        return out

    def processes(self, ref: str) -> list[ProcessInfo]:
        """The container's processes with their host uids and gids (from /proc: the source
        runs on this host). Processes that exit meanwhile are skipped."""
        try:
            top = self.api.top(ref, ps_args="-o pid")
        except docker.errors.NotFound:
            raise ContainerNotFound(f"container {ref!r} is gone") from None
        except docker.errors.APIError as e:
            raise EngineError(f"docker top {ref}: {e.explanation or e}") from None
        out = []
        for row in top.get("Processes") or []:
            try:
                pid = int(row[0])
            except (ValueError, IndexError):
                continue
            proc = procscan.process_info(pid)
            if proc is not None:
                out.append(proc)
        return out

    def exec(self, ref: str, argv: list[str], timeout: float) -> ExecResult:
        """Run ``argv`` inside the container (no shell of ours); keep the last 4 KiB of output.

        A command still running after ``timeout`` is reported with exit code None (Docker
        cannot kill an exec session; it ends with the container).
        """
        try:
            eid = self.api.exec_create(ref, argv, stdout=True, stderr=True)["Id"]
        except docker.errors.NotFound:
            raise ContainerNotFound(f"container {ref!r} is gone") from None
        except docker.errors.APIError as e:
            raise EngineError(f"docker exec {ref}: {e.explanation or e}") from None
        tail = bytearray()

        def pump() -> None:
            try:
                for chunk in self.api.exec_start(eid, stream=True):
                    tail.extend(chunk)
                    del tail[:-_EXEC_TAIL]
            except (docker.errors.APIError, requests.RequestException) as e:
                tail.extend(f"\n[migrate: reading the output failed: {e}]".encode())

        t = threading.Thread(target=pump, daemon=True, name=f"exec-{eid[:12]}")
        t.start()
        t.join(timeout)
        code: int | None = None
        if not t.is_alive():
            try:
                res = self.api.exec_inspect(eid)
            except docker.errors.APIError as e:
                raise EngineError(f"docker exec inspect {ref}: {e.explanation or e}") from None
            if not res.get("Running") and res.get("ExitCode") is not None:
                code = int(res["ExitCode"])
        return ExecResult(code, bytes(tail).decode(errors="replace"))

    def log_file(self, ref: str) -> Path | None:
        """The container's log file when Docker keeps one we can carry (json-file driver):
        where it is, or for a container never started, where the driver will append to it."""
        c = self._inspect(ref)
        if ((c.get("HostConfig") or {}).get("LogConfig") or {}).get("Type") != "json-file":
            return None
        if c.get("LogPath"):
            return Path(str(c["LogPath"]))
        cid = str(c["Id"])
        return self.data_root / "containers" / cid / f"{cid}-json.log"

    # --- checkpoint / restore -------------------------------------------------------------

    def checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> None:
        """Dump the (paused) container's tasks with CRIU, leaving them paused."""
        runc.checkpoint(self.state(ref), image_dir, work_dir)

    def start_lazy_checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> PageServer:
        """Post-copy dump of the (paused) container (runc.start_lazy_checkpoint)."""
        return runc.start_lazy_checkpoint(self.state(ref), image_dir, work_dir)

    def checkpoint_dir(self, ref: str, name: str) -> Path:
        return self._checkpoint_path(self.state(ref).id, name)

    def _checkpoint_path(self, cid: str, name: str) -> Path:
        return self.data_root / "containers" / cid / "checkpoints" / name

    def _exec_root(self) -> Path:
        """dockerd's --exec-root: from the process that serves our API socket."""
        base = str(self.api.base_url)
        sock = ""
        if base.startswith(("http+docker://", "unix")):
            adapter = self.api.get_adapter(base)
            sock = str(getattr(adapter, "socket_path", "") or "")
        return procscan.exec_root(sock)

    def staging_dir(self, ref: str, name: str) -> Path:
        """Where the agent keeps a checkpoint's complete images when Docker gets only part of
        them (lazy_pages.py). Inside the container's own directory, so `docker rm` (the
        rollback) deletes it too, and on the same file system as ``checkpoint_dir``."""
        cid = self.state(ref).id
        return self.data_root / "containers" / cid / f"migrate-{name}"

    def start_from_checkpoint(
        self, ref: str, name: str, *, lazy: LazyRestore | None = None
    ) -> None:
        """Start the container from the checkpoint ``name``. With ``lazy``, the checkpoint
        holds no lazy memory: runc's CRIU configuration tells the restoring CRIU to ask the
        local lazy-pages daemon for it (the file exists only while Docker starts the task)."""
        cid = self.state(ref).id
        images = self._checkpoint_path(cid, name)  # no second inspect inside the downtime
        if lazy is None:
            with runc_conf.criu_config_lock(exclusive=False):
                self._start(ref, cid, name, images, containerd.task_work(self._exec_root(), cid))
            return
        with runc_conf.lazy_restore_conf(lazy.work_dir):
            self._start(ref, cid, name, images, lazy.work_dir)

    def lazy_restore_blocker(self) -> str:
        """Why a lazy restore cannot be done here ("" when it can)."""
        return runc_conf.lazy_restore_blocker()

    def settle_restore_config(self) -> None:
        runc_conf.settle()

    def _start(self, ref: str, cid: str, name: str, images: Path, work: Path) -> None:
        # containerd deletes the task directory, CRIU's restore.log with it, as soon as the
        # restore fails: hold the log open from the moment it appears so we can still read it.
        watcher = LogHolder(work / "restore.log")
        watcher.start()
        try:
            res = self.api._post(
                self.api._url("/containers/{0}/start", ref), params={"checkpoint": name}
            )
            self.api._raise_for_status(res)
        except docker.errors.APIError as e:
            msg = str(e.explanation or e)
            tail = watcher.tail()
            m = re.search(r"log file: (\S+?\.log)", msg)
            if not tail and m:
                tail = log_tail(Path(m.group(1)))
            raise RestoreFailed(
                f"CRIU could not restore the container: {msg}"
                + (f"\nCRIU log, last lines:\n{tail}" if tail else ""),
                hint=criu_hint(tail),
                details={"criu_log": tail},
            ) from None
        finally:
            watcher.stop()
            # containerd unpacks the images into a temporary directory for CRIU and never
            # deletes it: one leaked copy of the container's memory per restore.
            for leftover in containerd.restore_copies(self._exec_root(), images):
                log.debug("removing containerd's restore copy %s", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
