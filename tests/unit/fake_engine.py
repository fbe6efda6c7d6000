"""An in-memory container engine for the state-machine tests (test_state_machine.py).

It satisfies migrate.engines.base.Engine the way Docker does where the migration can tell:
containers are running, paused, created or exited; a checkpoint needs a paused container and
leaves it paused; a restore needs a created one. What is on disk is real, so the code that
moves it runs for real: each container's read-write layer is a directory, volumes have a
mountpoint, a checkpoint writes image files and a restore reads them back. Images, networks
and the containers' "memory" (bytes a checkpoint carries) are records in memory.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.core.errors import (
    CheckpointFailed,
    ContainerNotFound,
    EngineError,
    EngineUnavailable,
    RestoreFailed,
    Unsupported,
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
    ProcessInfo,
    VolumeInfo,
)

if TYPE_CHECKING:
    from migrate.checkpoint.postcopy import PageServer

# What a checkpoint's core image starts with; a restore refuses any other (the agent's
# agent:restore_fail point overwrites the core images with zeros).
CORE_MAGIC = b"FAKECORE"
BUILTIN_NETWORKS = frozenset({"bridge", "host", "none", "default"})


def plain_spec(**changes: Any) -> ContainerSpec:
    """A running container's spec with every field empty or the default (id ``c1``, name
    ``web``, the bridge network): for the tests that look at a few fields, set by ``changes``."""
    spec = ContainerSpec(
        id="c1",
        name="web",
        image_ref="img",
        image_id="sha256:x",
        hostname="h",
        env=(),
        cmd=(),
        entrypoint=(),
        working_dir="",
        user="",
        labels={},
        restart_policy="no",
        network_mode="bridge",
        ports=(),
        memory=0,
        nano_cpus=0,
        mounts=(),
        tty=False,
    )
    return replace(spec, **changes)


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    status: str  # created | running | paused | exited
    # What the container holds in memory: a checkpoint carries it, a restore brings it back.
    memory: bytes = b""
    labels: Mapping[str, str] | None = None


class FakeEngine:
    """One host's engine; everything it writes lives under ``root``."""

    name = "fake"

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.host = host
        root.mkdir(parents=True, exist_ok=True)
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, ImageInfo] = {}
        self.volumes: dict[str, VolumeInfo] = {}
        self.networks: dict[str, NetworkInfo] = {}
        # The agent's threads and the test's share an engine (a rollback over a new session).
        self._lock = threading.RLock()

    # --- test helpers ---------------------------------------------------------------------

    def add_image(self, ref: str) -> ImageInfo:
        img = ImageInfo(
            id="sha256:" + uuid.uuid5(uuid.NAMESPACE_URL, ref).hex * 2,
            repo_tags=(ref,),
            diff_ids=(f"sha256:{'1' * 64}", f"sha256:{'2' * 64}"),
            size=4096,
        )
        self.images[img.id] = img
        return img

    def run(
        self,
        name: str,
        *,
        files: Mapping[str, bytes],
        memory: bytes,
        image: str = "busybox:fake",
        volume: str | None = None,
        network: str | None = None,
    ) -> str:
        """A running container whose read-write layer holds ``files``, as `docker run`
        makes it (its volume and network created first)."""
        img = self.add_image(image)
        mounts: tuple[MountSpec, ...] = ()
        if volume is not None:
            v = self.create_volume(VolumeInfo(volume, "local", {}, {}, ""))
            (Path(v.mountpoint) / "data.txt").write_bytes(b"volume content\n")
            mounts = (MountSpec("volume", v.mountpoint, "/data", name=volume),)
        if network is not None:
            self.create_network(NetworkInfo(network, "bridge", {"Driver": "bridge"}))
        spec = ContainerSpec(
            id="",
            name=name,
            image_ref=image,
            image_id=img.id,
            hostname=name,
            env=("PATH=/bin",),
            cmd=("sh", "-c", "sleep 1000"),
            entrypoint=(),
            working_dir="/",
            user="",
            labels={"test": "state-machine"},
            restart_policy="no",
            network_mode=network or "bridge",
            ports=(),
            memory=0,
            nano_cpus=0,
            mounts=mounts,
            tty=False,
            networks=(network,) if network else ("bridge",),
        )
        cid = self.create(spec, name)
        with self._lock:
            c = self.containers[cid]
            c.status, c.memory = "running", memory
        for rel, data in files.items():
            p = self.upper(cid) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        log = self.log_file(cid)
        assert log is not None
        log.write_bytes(b'{"log":"started\\n","stream":"stdout"}\n')
        return cid

    def crash(self, ref: str) -> None:
        """The container's tasks die (a daemon restart without live-restore, say)."""
        with self._lock:
            self._get(ref).status = "exited"

    def by_name(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.spec.name == name), None)

    def upper(self, ref: str) -> Path:
        return self._dir(self._get(ref).id) / "upper"

    def files(self, ref: str) -> dict[str, bytes]:
        """The read-write layer's regular files, by path relative to it."""
        top = self.upper(ref)
        return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}

    # --- Engine: the host -----------------------------------------------------------------

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="fake",
            version="1.0",
            api_version="1.0",
            checkpoint_enabled=True,
            storage_driver="overlay2",
            rootfs_supported=True,
            data_root=str(self.root),
            runtime="runc",
            runc_version="1.1.0",
            cgroup_version="2",
            kernel="6.1.0",
            os="fake",
            mem_total=8 << 30,
            host_name=self.host,
            live_restore=False,
        )

    def refuse_unready(self, info: EngineInfo, *, destination: bool) -> None:
        if not info.checkpoint_enabled or (destination and not info.rootfs_supported):
            raise EngineUnavailable(f"fake engine on {self.host} cannot checkpoint")

    # --- Engine: rules ----------------------------------------------------------------------

    def shares_network_namespace(self, spec: ContainerSpec) -> bool:
        return spec.network_mode == "host" or spec.network_mode.startswith("container:")

    def user_networks(self, spec: ContainerSpec) -> list[str]:
        return [n for n in spec.networks if n not in BUILTIN_NETWORKS]

    def network_movable(self, net: NetworkInfo) -> bool:
        return net.driver == "bridge"

    def volume_movable(self, vol: VolumeInfo) -> bool:
        return vol.driver == "local" and not vol.options

    def anonymous_volume(self, name: str) -> bool:
        return len(name) == 64 and all(c in "0123456789abcdef" for c in name)

    # --- Engine: containers -----------------------------------------------------------------

    def spec(self, ref: str) -> ContainerSpec:
        c = self._get(ref)
        return replace(c.spec, id=c.id)

    def state(self, ref: str) -> ContainerState:
        c = self._get(ref)
        return ContainerState(
            id=c.id,
            name=c.spec.name,
            status=c.status,
            # As Docker says it: a paused container is still running.
            running=c.status in ("running", "paused"),
            paused=c.status == "paused",
            pid=4242 if c.status in ("running", "paused") else 0,
            upper_dir=str(self._dir(c.id) / "upper"),
        )

    def exists(self, ref: str) -> bool:
        return self._find(ref) is not None

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
        with self._lock:
            if self.by_name(name) is not None:
                raise EngineError(f"Conflict: the container name {name!r} is already in use")
            if self.image(image or spec.image_id) is None:
                raise EngineError(f"No such image: {image or spec.image_id}")
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            for sub in ("upper", "checkpoints"):
                (self._dir(cid) / sub).mkdir(parents=True)
            self.containers[cid] = FakeContainer(
                cid, replace(spec, id=cid, name=name), "created", labels=labels
            )
            return cid

    def pause(self, ref: str) -> None:
        with self._lock:
            c = self._get(ref)
            if c.status != "running":
                raise EngineError(f"container {c.spec.name} is {c.status}, not running")
            c.status = "paused"

    def unpause(self, ref: str) -> None:
        with self._lock:
            c = self._get(ref)
            if c.status != "paused":
                raise EngineError(f"container {c.spec.name} is not paused")
            c.status = "running"

    def remove(self, ref: str, *, force: bool = True) -> None:
        with self._lock:
            c = self._find(ref)
            if c is None:
                return  # as Docker's: removing what is gone is done
            if c.status in ("running", "paused") and not force:
                raise EngineError(f"container {c.spec.name} is running")
            del self.containers[c.id]
            shutil.rmtree(self._dir(c.id))

    def kill(self, ref: str) -> None:
        with self._lock:
            c = self._get(ref)
            if c.status not in ("running", "paused"):
                raise EngineError(f"container {c.spec.name} is not running")
            c.status = "exited"

    def running_containers(self, labels: Mapping[str, str] | None = None) -> list[str]:
        want = dict(labels or {})
        return [
            c.id
            for c in self.containers.values()
            if c.status == "running" and want.items() <= dict(c.spec.labels).items()
        ]

    def memory_usage(self, ref: str) -> int:
        return len(self._get(ref).memory)

    def exec_sessions(self, ref: str) -> list[str]:
        return []

    def processes(self, ref: str) -> list[ProcessInfo]:
        return []  # none to look at under /proc: the pre-copy sees no file being written

    def exec(self, ref: str, argv: list[str], timeout: float) -> ExecResult:
        return ExecResult(0, "")

    def log_file(self, ref: str) -> Path | None:
        cid = self._get(ref).id
        return self._dir(cid) / f"{cid}-json.log"

    # --- Engine: checkpoint / restore -------------------------------------------------------

    def checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> None:
        """Write the images of a paused container; it stays paused (runc --leave-running)."""
        with self._lock:
            c = self._get(ref)
            if c.status != "paused":
                raise CheckpointFailed(f"container {c.spec.name} is {c.status}, not paused")
            image_dir.mkdir(parents=True, exist_ok=True)
            work_dir.mkdir(parents=True, exist_ok=True)
            (image_dir / "inventory.img").write_bytes(b"inventory")
            (image_dir / "core-1.img").write_bytes(CORE_MAGIC + c.id.encode())
            (image_dir / "pages-1.img").write_bytes(c.memory)
            (work_dir / "dump.log").write_text("fake dump\n")

    def checkpoint_dir(self, ref: str, name: str) -> Path:
        return self._dir(self._get(ref).id) / "checkpoints" / name

    def staging_dir(self, ref: str, name: str) -> Path:
        return self._dir(self._get(ref).id) / f"migrate-{name}"

    def start_from_checkpoint(
        self, ref: str, name: str, *, lazy: LazyRestore | None = None
    ) -> None:
        with self._lock:
            c = self._get(ref)
            if c.status != "created":
                raise EngineError(f"container {c.spec.name} is {c.status}, not created")
            images = self.checkpoint_dir(c.id, name)
            cores = sorted(images.glob("core-*.img"))
            if not cores or not all(p.read_bytes().startswith(CORE_MAGIC) for p in cores):
                raise RestoreFailed(
                    "criu restore failed: corrupt core image",
                    details={"criu_log": "Error (criu/cr-restore.c): corrupt core image"},
                )
            c.memory = (images / "pages-1.img").read_bytes()
            c.status = "running"

    def ensure_frozen(self, ref: str) -> None:
        with self._lock:
            c = self._get(ref)
            if c.status == "running":
                c.status = "paused"

    def start_lazy_checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> PageServer:
        raise Unsupported("the fake engine has no post-copy")

    def lazy_restore_blocker(self) -> str:
        return "the fake engine restores the plain way only"

    def settle_restore_config(self) -> None:
        pass  # no runc configuration to put right

    # --- Engine: images ---------------------------------------------------------------------

    def image(self, ref: str) -> ImageInfo | None:
        return next((i for i in self.images.values() if ref == i.id or ref in i.repo_tags), None)

    def layers_present(self) -> set[str]:
        return {d for i in self.images.values() for d in i.diff_ids}

    def save_image(self, refs: Iterable[str]) -> Iterator[bytes]:
        return self.save_missing_layers(refs, set())

    def save_missing_layers(
        self, refs: Iterable[str], present: set[str], stats: dict[str, int] | None = None
    ) -> Iterator[bytes]:
        imgs = [i for i in (self.image(r) for r in refs) if i is not None]
        layers = [d for i in imgs for d in i.diff_ids]
        if stats is not None:
            stats["layers_sent"] = sum(d not in present for d in layers)
            stats["layers_skipped"] = sum(d in present for d in layers)
        doc = [
            {"id": i.id, "tags": list(i.repo_tags), "diff_ids": list(i.diff_ids), "size": i.size}
            for i in imgs
        ]
        yield json.dumps(doc).encode()

    def load_image(self, chunks: Iterable[bytes]) -> None:
        for d in json.loads(b"".join(chunks)):
            img = ImageInfo(d["id"], tuple(d["tags"]), tuple(d["diff_ids"]), int(d["size"]))
            self.images[img.id] = img

    def remove_image(self, ref: str) -> bool:
        img = self.image(ref)
        if img is None:
            return False
        del self.images[img.id]
        return True

    # --- Engine: volumes and networks -------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        return name in self.volumes

    def volume(self, name: str) -> VolumeInfo | None:
        return self.volumes.get(name)

    def create_volume(self, vol: VolumeInfo) -> VolumeInfo:
        with self._lock:
            if vol.name in self.volumes:
                raise EngineError(f"volume {vol.name} exists")
            mp = self.root / "volumes" / vol.name / "_data"
            mp.mkdir(parents=True)
            made = VolumeInfo(vol.name, vol.driver, vol.options, vol.labels, str(mp))
            self.volumes[vol.name] = made
            return made

    def remove_volume(self, name: str) -> None:
        with self._lock:
            if self.volumes.pop(name, None) is not None:
                shutil.rmtree(self.root / "volumes" / name)

    def network(self, name: str) -> NetworkInfo | None:
        return self.networks.get(name)

    def create_network(self, net: NetworkInfo) -> None:
        with self._lock:
            if net.name in self.networks:
                raise EngineError(f"network {net.name} exists")
            self.networks[net.name] = net

    def remove_network(self, name: str) -> None:
        self.networks.pop(name, None)

    # --- internals --------------------------------------------------------------------------

    def _dir(self, cid: str) -> Path:
        return self.root / "containers" / cid

    def _find(self, ref: str) -> FakeContainer | None:
        with self._lock:
            c = self.containers.get(ref)
            return c if c is not None else self.by_name(ref)

    def _get(self, ref: str) -> FakeContainer:
        c = self._find(ref)
        if c is None:
            raise ContainerNotFound(f"no such container: {ref}")
        return c
