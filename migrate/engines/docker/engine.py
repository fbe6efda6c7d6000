"""Docker engine: every Docker-specific call, path and JSON shape lives here.

Checkpoints are taken by invoking runc directly on the paused container (Docker's own
checkpoint API scales at ~15 ms per MB here, runc direct dumps 256 MB in 0.3 s; PLATFORM.md).
Docker keeps seeing the container as paused, so unpausing is still a clean rollback. The
images are restored through Docker (`start?checkpoint=NAME`), which keeps Docker's view of the
destination container consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from migrate.checkpoint.criu import log_tail
from migrate.checkpoint.postcopy import LOOPBACK, PageServer, free_port
from migrate.core.errors import (
    CheckpointFailed,
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
    ImageInfo,
    LazyRestore,
    MountSpec,
    NetworkInfo,
    PortBinding,
    ProcessInfo,
    VolumeInfo,
)
from migrate.fs.files import atomic_write

log = logging.getLogger(__name__)

# How long Docker API calls may take. Restores of large checkpoints go through containerd's
# content store and can take seconds per GB.
API_TIMEOUT = 300
RUNC_TIMEOUT = 600
_EXEC_TAIL = 4096

# Fields of Config / HostConfig that describe the old container instance, not its intent.
_DROP_CONFIG = ("Image",)
_DROP_HOSTCONFIG = ("ContainerIDFile",)


class DockerEngine:
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
            experimental=bool(v.get("Experimental", i.get("ExperimentalBuild", False))),
            storage_driver=str(i.get("Driver", "")),
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
        if pid:
            try:
                for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
                    parts = line.split()
                    if len(parts) > 4 and parts[4] == "/":
                        m = re.search(r"upperdir=([^,]+)", line)
                        if m:
                            return m.group(1)
            except OSError:
                pass
        return ""

    def spec(self, ref: str) -> ContainerSpec:
        c = self._inspect(ref)
        cfg = dict(c.get("Config") or {})
        host = dict(c.get("HostConfig") or {})
        ports: list[PortBinding] = []
        for cport, bindings in sorted((host.get("PortBindings") or {}).items()):
            for b in bindings or []:
                ports.append(
                    PortBinding(cport, str(b.get("HostIp", "")), str(b.get("HostPort", "")))
                )
        mounts = tuple(
            MountSpec(
                type=str(m.get("Type", "")),
                source=str(m.get("Source", "")),
                destination=str(m.get("Destination", "")),
                name=str(m.get("Name", "")),
                rw=bool(m.get("RW", True)),
            )
            for m in c.get("Mounts") or []
        )
        networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
        endpoints: dict[str, Any] = {}
        for net, ep in networks.items():
            endpoints[net] = {
                "Aliases": [a for a in (ep.get("Aliases") or []) if not c["Id"].startswith(a)]
                or None,
            }
            # Keep the address where the destination's network allows it (create() drops it
            # when that network has no user-configured subnet).
            ipam = dict(ep.get("IPAMConfig") or {})
            if ep.get("IPAddress") and net not in ("bridge", "host", "none"):
                ipam["IPv4Address"] = ep["IPAddress"]
            if ipam:
                endpoints[net]["IPAMConfig"] = ipam
        rp = host.get("RestartPolicy") or {}
        return ContainerSpec(
            id=c["Id"],
            name=str(c.get("Name", "")).lstrip("/"),
            image_ref=str(cfg.get("Image", "")),
            image_id=str(c.get("Image", "")),
            hostname=str(cfg.get("Hostname", "")),
            env=tuple(cfg.get("Env") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            working_dir=str(cfg.get("WorkingDir", "")),
            user=str(cfg.get("User", "")),
            labels=dict(cfg.get("Labels") or {}),
            restart_policy=str(rp.get("Name", "") or "no"),
            network_mode=str(host.get("NetworkMode", "")),
            ports=tuple(ports),
            memory=int(host.get("Memory") or 0),
            nano_cpus=int(host.get("NanoCpus") or 0),
            mounts=mounts,
            tty=bool(cfg.get("Tty")),
            raw={"Config": cfg, "HostConfig": host, "Endpoints": endpoints},
            networks=tuple(sorted(networks)),
        )

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
        cfg = {k: v for k, v in dict(spec.raw.get("Config") or {}).items() if k not in _DROP_CONFIG}
        host = {
            k: v
            for k, v in dict(spec.raw.get("HostConfig") or {}).items()
            if k not in _DROP_HOSTCONFIG
        }
        # CRIU restores the source's UTS namespace: pin the hostname so that `hostname`,
        # /etc/hostname and inspect agree on the destination (PLATFORM.md).
        cfg["Hostname"] = spec.hostname
        cfg["Image"] = image or spec.image_ref or spec.image_id
        if labels:
            cfg["Labels"] = {**dict(cfg.get("Labels") or {}), **labels}
        mode = spec.network_mode
        if isolated:
            mode = "none"
            host.update(
                NetworkMode="none",
                PortBindings={},
                PublishAllPorts=False,
                Links=None,
                RestartPolicy={"Name": "no", "MaximumRetryCount": 0},
            )
            cfg.pop("MacAddress", None)
        if volume_names:
            _rename_volumes(host, volume_names)
        if keep_volume_names:
            _pin_anonymous_volumes(host, spec)
        body: dict[str, Any] = dict(cfg)
        body["HostConfig"] = host
        endpoints = dict(spec.raw.get("Endpoints") or {})
        if (
            endpoints
            and mode not in ("", "default", "bridge", "host", "none")
            and not mode.startswith("container:")
        ):
            ep = dict(endpoints.get(mode) or {})
            if ep.get("IPAMConfig") and not self._user_subnet(mode):
                ep.pop("IPAMConfig")
            body["NetworkingConfig"] = {"EndpointsConfig": {mode: ep}}
        try:
            res = self.api.create_container_from_config(body, name=name)
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
                self._connect_extra_networks(cid, mode, endpoints)
            except EngineError:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_container(cid, force=True, v=False)
                raise
        return cid

    def _connect_extra_networks(self, cid: str, primary: str, endpoints: Mapping[str, Any]) -> None:
        for net, ep in sorted(endpoints.items()):
            if net == primary or net in ("bridge", "host", "none"):
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
        st = self.state(ref)
        root = self._runc_root(st.pid) if st.pid else None
        if root is None:
            raise EngineError(
                f"docker says {st.name} is paused, runc disagrees, and runc's "
                "state cannot be found to reconcile them"
            )
        runc = _runc_binary()
        p = subprocess.run(
            [runc, "--root", str(root), "pause", st.id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if p.returncode != 0:
            raise EngineError(f"runc pause {st.name}: {p.stderr.strip()[-300:]}")

    def ensure_frozen(self, ref: str) -> None:
        """Make sure a container Docker sees as paused is frozen in fact (a CRIU dump that
        ended abnormally may have thawed it behind Docker's back)."""
        st = self.state(ref)
        if not st.paused or not st.pid:
            return
        root = self._runc_root(st.pid)
        if root is None:
            raise EngineError(f"runc's state for {st.name} cannot be found to freeze it")
        runc = _runc_binary()
        p = subprocess.run(
            [runc, "--root", str(root), "state", st.id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if p.returncode == 0 and json.loads(p.stdout or "{}").get("status") == "paused":
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
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, ValueError, IndexError):
                continue
            ids: dict[str, tuple[int, ...]] = {}
            for line in status.splitlines():
                key, _, rest = line.partition(":")
                if key in ("Uid", "Gid"):
                    ids[key] = tuple(int(x) for x in rest.split())
            out.append(
                ProcessInfo(
                    pid,
                    ids.get("Uid", ()),
                    ids.get("Gid", ()),
                    cmd.decode(errors="replace").strip(),
                )
            )
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

    # --- volumes --------------------------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        try:
            self.api.inspect_volume(name)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume inspect {name}: {e.explanation or e}") from None

    def remove_volume(self, name: str) -> None:
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume rm {name}: {e.explanation or e}") from None

    def volume(self, name: str) -> VolumeInfo | None:
        try:
            v = self.api.inspect_volume(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume inspect {name}: {e.explanation or e}") from None
        return VolumeInfo(
            name=str(v.get("Name", name)),
            driver=str(v.get("Driver", "")),
            options={str(k): str(x) for k, x in (v.get("Options") or {}).items()},
            labels={str(k): str(x) for k, x in (v.get("Labels") or {}).items()},
            mountpoint=str(v.get("Mountpoint", "")),
        )

    def create_volume(self, vol: VolumeInfo) -> VolumeInfo:
        try:
            self.api.create_volume(
                vol.name,
                driver=vol.driver or "local",
                driver_opts=dict(vol.options) or None,
                labels=dict(vol.labels) or None,
            )
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume create {vol.name}: {e.explanation or e}") from None
        made = self.volume(vol.name)
        if made is None:
            raise EngineError(f"docker volume create {vol.name}: the volume is missing after it")
        return made

    # --- networks -------------------------------------------------------------------------

    def _user_subnet(self, name: str) -> bool:
        """Docker accepts a fixed address only on a network with a configured subnet."""
        try:
            n = self.api.inspect_network(name)
        except docker.errors.APIError:
            return False
        return bool((n.get("IPAM") or {}).get("Config"))

    def network(self, name: str) -> NetworkInfo | None:
        try:
            n = self.api.inspect_network(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            raise EngineError(f"docker network inspect {name}: {e.explanation or e}") from None
        ipam = dict(n.get("IPAM") or {})
        raw = {
            "Driver": n.get("Driver", "bridge"),
            "Options": dict(n.get("Options") or {}),
            "Labels": dict(n.get("Labels") or {}),
            "IPAM": {
                "Driver": ipam.get("Driver") or "default",
                "Config": list(ipam.get("Config") or []),
                "Options": dict(ipam.get("Options") or {}),
            },
            "Internal": bool(n.get("Internal")),
            "Attachable": bool(n.get("Attachable")),
            "EnableIPv6": bool(n.get("EnableIPv6")),
        }
        return NetworkInfo(name=str(n.get("Name", name)), driver=str(raw["Driver"]), raw=raw)

    def create_network(self, net: NetworkInfo) -> None:
        raw = dict(net.raw)
        try:
            self.api.create_network(
                net.name,
                driver=net.driver,
                options=raw.get("Options") or None,
                ipam=raw.get("IPAM") or None,
                internal=bool(raw.get("Internal")),
                labels=raw.get("Labels") or None,
                enable_ipv6=bool(raw.get("EnableIPv6")),
                attachable=bool(raw.get("Attachable")),
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            raise EngineError(f"docker network create {net.name}: {e.explanation or e}") from None

    def remove_network(self, name: str) -> None:
        try:
            self.api.remove_network(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise EngineError(f"docker network rm {name}: {e.explanation or e}") from None

    # --- images ---------------------------------------------------------------------------

    def remove_image(self, ref: str) -> bool:
        """Remove an image unless a container still uses it. True if it was removed."""
        try:
            self.api.remove_image(ref, force=False, noprune=False)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            if e.status_code == 409:  # in use by a container: keep it
                return False
            raise EngineError(f"docker rmi {ref}: {e.explanation or e}") from None

    def image(self, ref: str) -> ImageInfo | None:
        try:
            i = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            if e.status_code == 404:
                return None
            raise EngineError(f"docker image inspect {ref}: {e.explanation or e}") from None
        return ImageInfo(
            id=str(i["Id"]),
            repo_tags=tuple(i.get("RepoTags") or ()),
            diff_ids=tuple((i.get("RootFS") or {}).get("Layers") or ()),
            size=int(i.get("Size") or 0),
        )

    def layers_present(self) -> set[str]:
        have: set[str] = set()
        for img in self.api.images(all=True):
            info = self.image(img["Id"])
            if info:
                have.update(info.diff_ids)
        return have

    def save_image(self, refs: Iterable[str]) -> Iterator[bytes]:
        names = list(refs)
        try:
            res = self.api._get(self.api._url("/images/get"), params={"names": names}, stream=True)
            self.api._raise_for_status(res)
        except docker.errors.APIError as e:
            raise EngineError(f"docker save {names}: {e.explanation or e}") from None
        yield from res.iter_content(chunk_size=1 << 20)

    def load_image(self, chunks: Iterable[bytes]) -> None:
        try:
            for msg in self.api.load_image(chunks):
                if isinstance(msg, dict) and msg.get("error"):
                    raise EngineError(f"docker load: {msg['error']}")
        except docker.errors.APIError as e:
            raise EngineError(f"docker load: {e.explanation or e}") from None

    # --- checkpoint / restore -------------------------------------------------------------

    def _runc_root(self, pid: int) -> Path | None:
        """runc's state root for a running container: from its shim's options.json."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
            bundle = Path(os.readlink(f"/proc/{ppid}/cwd"))
            opts = json.loads((bundle / "options.json").read_text())
            ns = bundle.parent.name  # .../io.containerd.runtime.v2.task/<namespace>/<id>
            root = Path(opts.get("root") or "")
            if root and (root / ns).is_dir():
                return root / ns
        except (OSError, ValueError, AttributeError) as e:
            log.debug("runc root not found via shim of pid %s: %s", pid, e)
        return None

    def _runc_target(self, ref: str) -> tuple[ContainerState, str, Path]:
        """The container's state, the runc binary and runc's state root for it."""
        st = self.state(ref)
        runc = _runc_binary()
        root = self._runc_root(st.pid) if st.pid else None
        if root is None or not (root / st.id).is_dir():
            raise CheckpointFailed(
                f"cannot find runc's state for container {st.name}",
                hint="is the container running under runc (Docker's default runtime)?",
            )
        return st, runc, root

    def checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> None:
        """Dump the (paused) container's tasks with CRIU, leaving them paused."""
        st, runc, root = self._runc_target(ref)
        image_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            runc,
            "--root",
            str(root),
            "checkpoint",
            "--leave-running",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work_dir),
            "--file-locks",
            st.id,
        ]
        log.debug("checkpoint: %s", argv)
        try:
            with criu_config_lock(exclusive=False):
                p = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=RUNC_TIMEOUT,
                    check=False,
                    env=dump_env(work_dir),
                )
        except subprocess.TimeoutExpired:
            raise CheckpointFailed(
                f"CRIU dump of {st.name} did not finish in {RUNC_TIMEOUT} s",
                details={"criu_log": log_tail(work_dir / "dump.log")},
            ) from None
        if p.returncode != 0:
            tail = log_tail(work_dir / "dump.log")
            raise CheckpointFailed(
                f"CRIU could not checkpoint {st.name}: {p.stderr.strip()[-500:]}\n"
                f"CRIU log ({work_dir / 'dump.log'}), last lines:\n{tail}",
                hint=_criu_hint(tail),
                details={"criu_log": tail, "log_path": str(work_dir / "dump.log")},
            )

    def start_lazy_checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> PageServer:
        """Post-copy dump of the (paused) container: CRIU writes the non-memory images to
        ``image_dir`` and then serves the memory from a page server on this host's loopback
        until the destination has all of it (postcopy.py). Returns once the images are
        written. No --leave-running: once every page has moved CRIU kills the source tasks;
        if the link breaks first they stay frozen (Docker still sees them paused)."""
        st, runc, root = self._runc_target(ref)
        image_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [
            runc,
            "--root",
            str(root),
            "checkpoint",
            "--lazy-pages",
            "--page-server",
            f"{LOOPBACK}:{port}",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work_dir),
            "--file-locks",
            st.id,
        ]
        log.debug("lazy checkpoint: %s", argv)
        # CRIU reads runc.conf as it starts: hold the lock (shared) until the images are
        # written, not while the page server runs.
        with criu_config_lock(exclusive=False):
            server = PageServer(argv, work_dir, port, env=dump_env(work_dir))
            server.wait_ready()
        return server

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
        pid = _socket_owner(sock) if sock else None
        if pid:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                for i, a in enumerate(argv):
                    if a == b"--exec-root" and i + 1 < len(argv):
                        return Path(argv[i + 1].decode())
                    if a.startswith(b"--exec-root="):
                        return Path(a.split(b"=", 1)[1].decode())
            except OSError:
                pass
        return Path("/var/run/docker")

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
            with criu_config_lock(exclusive=False):
                self._start(ref, cid, name, images, self._task_work(cid))
            return
        with criu_config_lock(exclusive=True):
            original = _write_lazy_conf(lazy.work_dir)
            try:
                self._start(ref, cid, name, images, lazy.work_dir)
            finally:
                _restore_conf(original)

    def lazy_restore_blocker(self) -> str:
        """Why a lazy restore cannot be done here ("" when it can)."""
        try:
            text = RUNC_CRIU_CONF.read_text()
        except FileNotFoundError:
            return ""
        except OSError as e:
            return f"{RUNC_CRIU_CONF} is unreadable: {e}"
        if text.startswith(_CONF_MARKER):
            return ""  # a leftover of ours: put right under the lock
        if _conf_options(text) & {"lazy-pages", "work-dir"}:
            # The administrator's own lazy settings would fight ours for the same restore.
            return f"{RUNC_CRIU_CONF} sets lazy-pages or work-dir itself"
        return ""

    def settle_restore_config(self) -> None:
        try:
            first = RUNC_CRIU_CONF.read_text().split("\n", 1)[0]
        except OSError:
            return
        if first.startswith(_CONF_MARKER):
            # Ours, from a live writer or a killed one: taking the lock exclusively waits for
            # the former and puts the latter's back. Only then: the lock also waits for every
            # dump on the host, which a rollback should not when there is nothing to settle.
            with criu_config_lock(exclusive=True):
                pass

    def _task_work(self, cid: str) -> Path:
        return (
            self._exec_root()
            / "containerd"
            / "daemon"
            / "io.containerd.runtime.v2.task"
            / "moby"
            / cid
            / "work"
        )

    def _start(self, ref: str, cid: str, name: str, images: Path, work: Path) -> None:
        # containerd deletes the task directory, CRIU's restore.log with it, as soon as the
        # restore fails: hold the log open from the moment it appears so we can still read it.
        watcher = _LogHolder(work / "restore.log")
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
                hint=_criu_hint(tail),
                details={"criu_log": tail},
            ) from None
        finally:
            watcher.stop()
            # containerd unpacks the images into a temporary directory for CRIU and never
            # deletes it: one leaked copy of the container's memory per restore.
            for leftover in _containerd_restore_copies(self._exec_root(), images):
                log.debug("removing containerd's restore copy %s", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def _runc_binary() -> str:
    """The runc that Docker uses (Debian's package puts it in /usr/sbin)."""
    return shutil.which("runc") or "/usr/sbin/runc"


def _pin_anonymous_volumes(host: dict[str, Any], spec: ContainerSpec) -> None:
    """Mount every volume of ``spec`` by its name, so the create reuses it: anonymous ones
    (``-v /path``, ``--mount type=volume,target=/path`` or the image's VOLUME) included."""
    names = {m.destination: m.name for m in spec.mounts if m.type == "volume" and m.name}
    mounts = [dict(m) for m in host.get("Mounts") or []]
    for m in mounts:
        if m.get("Type") == "volume" and not m.get("Source") and m.get("Target") in names:
            m["Source"] = names[str(m["Target"])]
    named = {b.split(":", 2)[1] for b in host.get("Binds") or [] if b.count(":") >= 1}
    named |= {str(m.get("Target")) for m in mounts}
    mounts += [
        {"Type": "volume", "Source": m.name, "Target": m.destination, "ReadOnly": not m.rw}
        for m in spec.mounts
        if m.type == "volume" and m.name and m.destination not in named
    ]
    if mounts:
        host["Mounts"] = mounts


def _rename_volumes(host: dict[str, Any], names: Mapping[str, str]) -> None:
    """Point the named volumes of a HostConfig (``Binds`` "name:/dst[:opts]" and ``Mounts``
    of type volume) at other names. Bind mounts start with "/" and never match a name."""
    if host.get("Binds"):
        binds = []
        for b in host["Binds"]:
            src, sep, rest = str(b).partition(":")
            binds.append(f"{names[src]}{sep}{rest}" if sep and src in names else b)
        host["Binds"] = binds
    if host.get("Mounts"):
        host["Mounts"] = [
            {**m, "Source": names[m["Source"]]}
            if m.get("Type") == "volume" and m.get("Source") in names
            else m
            for m in host["Mounts"]
        ]


# runc reads CRIU options from this file for every checkpoint and restore on the host (Docker
# 20.10 cannot set the per-container ``org.criu.config`` annotation). For the instant Docker
# starts a lazy restore we add our options to it, under an exclusive lock that our own
# checkpoints and plain restores take shared. The administrator's file (make setup writes
# `file-locks` there) is kept: copied aside first, its options kept in ours, and put back
# by an atomic rename. Our file carries a marker, so a leftover from a killed agent is
# recognised and the administrator's file restored by the next migrate on the host.
RUNC_CRIU_CONF = Path("/etc/criu/runc.conf")
_CONF_MARKER = "# written by migrate, pid"
_CONF_LOCK = Path("/run/lock/migrate-runc-criu-conf.lock")
CONF_LOCK_WAIT_S = 120.0  # a restore holds it exclusively for about a second


# CRIU options for the dumps we start, in a file of the dump's own work directory: runc passes
# its environment to its CRIU, which reads the file CRIU_CONFIG_FILE names before runc's RPC
# options and runc.conf (those still win). Nothing global is written.
DUMP_CONF = "criu-dump.conf"


def dump_env(work_dir: Path) -> dict[str, str] | None:
    """Environment for a runc checkpoint: CRIU's network lock skipped, when that is safe.

    The lock drops every packet of the container's network namespace while CRIU dumps it, so
    that an established TCP connection's state cannot move under the dump, and the restore
    lifts it again with iptables-restore in the new namespace: 50-60 ms inside the downtime
    here (benchmarks/results/lazy-floor.md), the dump's side ~5 ms. migrate carries no
    established TCP connection: runc is never given --tcp-established, so CRIU refuses to dump
    one and the migration rolls back (tests/e2e/test_run_lazy.py). The lock then protects
    nothing: a listening socket queues what arrives, paused or not. The restore follows the
    dump's choice (CRIU records it in inventory.img), so no restore-side setting is needed.

    Kept (None: runc's own environment) when runc.conf asks for tcp-established (there the
    lock is what keeps those connections intact) or sets its own network-lock, when runc.conf
    cannot be read, or when the administrator already points CRIU_CONFIG_FILE somewhere."""
    if os.environ.get("CRIU_CONFIG_FILE"):
        return None
    try:
        text = RUNC_CRIU_CONF.read_text()
    except FileNotFoundError:
        text = ""
    except OSError:
        return None
    if _conf_options(text) & {"tcp-established", "network-lock"}:
        return None
    conf = work_dir / DUMP_CONF
    conf.write_text("network-lock skip\n")
    return {**os.environ, "CRIU_CONFIG_FILE": str(conf)}


def _conf_saved() -> Path:
    return RUNC_CRIU_CONF.with_name(RUNC_CRIU_CONF.name + ".migrate-saved")


def _conf_options(text: str) -> set[str]:
    """Option names of a CRIU configuration file (one option per line, `#` comments)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0].removeprefix("--"))
    return names


def _write_lazy_conf(work_dir: Path) -> str | None:
    """Called with the lock held exclusively: make runc's CRIU restore lazily with its
    work directory in ``work_dir``. Returns the administrator's file content (None if there
    was none), which :func:`_restore_conf` puts back."""
    try:
        original: str | None = RUNC_CRIU_CONF.read_text()
    except FileNotFoundError:
        original = None
    RUNC_CRIU_CONF.parent.mkdir(parents=True, exist_ok=True)
    if original is not None:
        atomic_write(_conf_saved(), original)  # durable before the file changes
    kept = "" if original is None else original.rstrip("\n") + "\n"
    atomic_write(
        RUNC_CRIU_CONF,
        f"{_CONF_MARKER} {os.getpid()}: put back as soon as the restore has started\n"
        f"{kept}lazy-pages\nwork-dir {work_dir}\n",
    )
    return original


def _restore_conf(original: str | None) -> None:
    """Put the administrator's runc.conf back (or remove ours when there was none)."""
    saved = _conf_saved()
    if original is not None and saved.exists():
        os.replace(saved, RUNC_CRIU_CONF)
    else:
        RUNC_CRIU_CONF.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)


@contextlib.contextmanager
def criu_config_lock(*, exclusive: bool) -> Iterator[None]:
    """Host-wide lock around runc's CRIU configuration file (see RUNC_CRIU_CONF)."""
    lock = _CONF_LOCK if _CONF_LOCK.parent.is_dir() else Path("/tmp") / _CONF_LOCK.name
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Bounded: a stuck holder (a hung restore on this host) must not hang every later
        # checkpoint and restore here without a word.
        deadline = time.monotonic() + CONF_LOCK_WAIT_S
        attempt = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holders = _flock_holders(lock)
                    raise EngineError(
                        f"runc's CRIU configuration ({RUNC_CRIU_CONF}) has been locked for "
                        f"{CONF_LOCK_WAIT_S:.0f} s by "
                        + (f"pid {', '.join(map(str, holders))}" if holders else "another process"),
                        hint="a restore on this host is stuck: see that process (ps -p PID), "
                        "then retry",
                    ) from None
                time.sleep(lock_backoff(attempt))
                attempt += 1
        _remove_stale_conf()
        if not exclusive:
            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade: dumps and plain restores may overlap
        yield
    finally:
        os.close(fd)


def lock_backoff(attempt: int) -> float:
    """Seconds to wait before retrying the runc.conf lock. Every checkpoint and restore on the
    host takes it, the lazy restore inside the downtime: short waits first (a dump holds it
    shared for ~0.1-0.3 s), then at most 50 ms between attempts."""
    return min(0.05, 0.002 * 2.0 ** min(attempt, 5))


def _flock_holders(path: Path) -> list[int]:
    """Pids holding an flock on ``path`` (from /proc/locks, by inode)."""
    try:
        ino = os.stat(path).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    pids = []
    for line in text.splitlines():
        f = line.split()
        if "->" in f:  # a waiter, not a holder
            continue
        if len(f) >= 6 and f[1] == "FLOCK" and f[5].endswith(f":{ino}") and f[4].isdigit():
            pids.append(int(f[4]))
    return sorted(set(pids))


def _remove_stale_conf() -> None:
    """Called with the lock held exclusively: a writer puts the administrator's file back
    before it lets the lock go, so a file carrying our marker now is a leftover of an agent
    killed mid-restore. Left there it would turn every later checkpoint on this host into a
    lazy one: put the administrator's file back (or remove ours)."""
    saved = _conf_saved()
    try:
        first = RUNC_CRIU_CONF.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        first = ""
    except OSError:
        return
    if first.startswith(_CONF_MARKER):
        log.warning("putting back %s left behind by a migrate that was killed", RUNC_CRIU_CONF)
        _restore_conf(None if not saved.exists() else "")
    elif saved.exists():
        saved.unlink(missing_ok=True)  # killed before its own file was written: a spare copy


class _LogHolder(threading.Thread):
    """Opens a file as soon as it exists and keeps it open, so it outlives its deletion."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self._stop_evt = threading.Event()
        self._fd: int | None = None

    def run(self) -> None:
        while not self._stop_evt.is_set() and self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                self._stop_evt.wait(0.005)

    def tail(self) -> str:
        self._stop_evt.set()
        self.join(timeout=1)
        if self._fd is None:
            return ""
        with os.fdopen(os.dup(self._fd), "rb") as f:
            f.seek(0)
            data = f.read()[-(256 << 10) :]
        text = data.decode(errors="replace")
        return _log_tail_text(text)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=1)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _log_tail_text(text: str, lines: int = 8) -> str:
    rows = text.splitlines()
    # Every CRIU run here logs the RLIMIT_NOFILE line; it is harmless (PLATFORM.md).
    errors = [r for r in rows if "Error" in r and "RLIMIT_NOFILE" not in r]
    tail = rows[-lines:]
    picked = [r for r in errors[-10:] if r not in tail] + tail
    return "\n".join(picked)


_COMPARE_MAX = 1 << 20  # image files compared to recognise containerd's copy of ours


def _containerd_restore_copies(exec_root: Path, images: Path) -> list[Path]:
    """containerd's ``ctrd-checkpoint*`` temporary directories holding a copy of ``images``.

    They live in containerd's temporary directory ($XDG_RUNTIME_DIR, else $TMPDIR, else /tmp,
    seen through its own root in case it has a private /tmp). A directory counts as ours only
    when every small image file in it is byte-identical to ours: other restores, of other
    containers, may be running at the same time."""
    sock = exec_root / "containerd" / "containerd.sock"
    pid = _socket_owner(str(sock)) if sock.exists() else None
    if pid is None:
        pid = _socket_owner("/run/containerd/containerd.sock")
    roots: list[Path] = []
    if pid is not None:
        env: dict[str, str] = {}
        try:
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                k, _, v = item.decode(errors="replace").partition("=")
                env[k] = v
        except OSError:
            pass
        tmp = env.get("XDG_RUNTIME_DIR") or env.get("TMPDIR") or "/tmp"
        roots.append(Path(f"/proc/{pid}/root") / tmp.lstrip("/"))
    roots.append(Path("/tmp"))
    try:
        ours = {f.name: f for f in images.iterdir() if f.is_file()}
    except OSError:
        return []
    small = {n: f for n, f in ours.items() if f.stat().st_size <= _COMPARE_MAX}
    if not small:
        return []
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root in roots:
        try:
            candidates = sorted(root.glob("ctrd-checkpoint*"))
        except OSError:
            continue
        for d in candidates:
            try:
                st = d.stat()
                if (st.st_dev, st.st_ino) in seen or not d.is_dir():
                    continue
                seen.add((st.st_dev, st.st_ino))
                if all((d / n).read_bytes() == f.read_bytes() for n, f in small.items()):
                    found.append(d)
            except OSError:
                continue
    return found


def _socket_owner(path: str) -> int | None:
    """PID of the process listening on a unix socket path (dockerd for its API socket)."""
    try:
        inode = None
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and parts[5] == "01":
                inode = parts[6]
                break
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                for fd in (pid_dir / "fd").iterdir():
                    if os.readlink(fd) == target:
                        return int(pid_dir.name)
            except OSError:
                continue
    except OSError:
        pass
    return None


def _criu_hint(tail: str) -> str:
    if "Can't get rlimit" in tail or "prlimit" in tail:
        return (
            "a process in the container runs as a non-root user and this host lacks "
            "CAP_SYS_RESOURCE, which CRIU needs to read its rlimits (see docs/platform.md)"
        )
    if "in the freezer cgroup" in tail or "Unexpected process" in tail:
        return "a `docker exec` session is running in the container: end it and retry"
    if "iptables" in tail:
        return "install iptables (CRIU locks the network with iptables-restore)"
    if "No space left on device" in tail or "Disk quota exceeded" in tail:
        return (
            "the file system of the staging directory (the log path above) is full: free "
            "space there, about as much as the container's memory, and retry"
        )
    return "see the CRIU log lines above"
