"""The engine interface: what the migration needs from a container engine.

Everything engine-specific (Docker's inspect JSON, API calls, paths of its data root) lives
in the engine module; the rest of the tool sees these frozen dataclasses only. ``raw`` fields
are opaque to everything except the engine that produced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class EngineInfo:
    engine: str  # "docker"
    version: str  # server version
    api_version: str
    experimental: bool
    storage_driver: str
    data_root: str
    runtime: str  # default runtime name
    runc_version: str  # "" when unknown
    cgroup_version: str
    kernel: str
    os: str
    mem_total: int
    host_name: str


@dataclass(frozen=True)
class PortBinding:
    container_port: str  # "80/tcp"
    host_ip: str
    host_port: str


@dataclass(frozen=True)
class MountSpec:
    type: str  # "volume" | "bind" | "tmpfs" | ...
    source: str
    destination: str
    name: str = ""
    rw: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """What is needed to recreate a container elsewhere (portable fields + engine blob)."""

    id: str
    name: str
    image_ref: str  # what the container was created from (tag or id)
    image_id: str
    hostname: str
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    entrypoint: tuple[str, ...]
    working_dir: str
    user: str
    labels: Mapping[str, str]
    restart_policy: str
    network_mode: str
    ports: tuple[PortBinding, ...]
    memory: int
    nano_cpus: int
    mounts: tuple[MountSpec, ...]
    tty: bool
    # Engine-private create parameters (opaque outside the engine that made them).
    raw: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ContainerSpec:
        d = dict(data)
        d["env"] = tuple(d.get("env") or ())
        d["cmd"] = tuple(d.get("cmd") or ())
        d["entrypoint"] = tuple(d.get("entrypoint") or ())
        d["labels"] = dict(d.get("labels") or {})
        d["ports"] = tuple(PortBinding(**p) for p in d.get("ports") or ())
        d["mounts"] = tuple(MountSpec(**m) for m in d.get("mounts") or ())
        d["raw"] = dict(d.get("raw") or {})
        return cls(**d)


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    status: str  # created|running|paused|restarting|removing|exited|dead
    running: bool
    paused: bool
    pid: int
    upper_dir: str  # the read-write layer on disk ("" when unknown)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    repo_tags: tuple[str, ...]
    diff_ids: tuple[str, ...]  # layer digests, base first
    size: int


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None: it did not finish within the timeout
    output: str  # the tail of stdout and stderr, interleaved


class Engine(Protocol):
    name: str

    def info(self) -> EngineInfo: ...

    def spec(self, ref: str) -> ContainerSpec: ...

    def state(self, ref: str) -> ContainerState: ...

    def exists(self, ref: str) -> bool: ...

    def image(self, ref: str) -> ImageInfo | None: ...

    def layers_present(self) -> set[str]: ...

    def save_image(self, refs: Iterable[str]) -> Iterator[bytes]: ...

    def load_image(self, chunks: Iterable[bytes]) -> None: ...

    def create(
        self,
        spec: ContainerSpec,
        name: str,
        image: str | None = None,
        *,
        isolated: bool = False,
        labels: Mapping[str, str] | None = None,
        volume_names: Mapping[str, str] | None = None,
    ) -> str: ...

    def pause(self, ref: str) -> None: ...

    def unpause(self, ref: str) -> None: ...

    def remove(self, ref: str, *, force: bool = True) -> None: ...

    def stop(self, ref: str) -> None: ...

    def kill(self, ref: str) -> None: ...

    def running_containers(self, labels: Mapping[str, str] | None = None) -> list[str]: ...

    def memory_usage(self, ref: str) -> int: ...

    def checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> None: ...

    def checkpoint_dir(self, ref: str, name: str) -> Path: ...

    def start_from_checkpoint(self, ref: str, name: str) -> None: ...

    def exec_sessions(self, ref: str) -> list[str]: ...

    def exec(self, ref: str, argv: list[str], timeout: float) -> ExecResult: ...

    def remove_image(self, ref: str) -> bool: ...

    def log_file(self, ref: str) -> Path | None: ...

    def volume_exists(self, name: str) -> bool: ...

    def remove_volume(self, name: str) -> None: ...
