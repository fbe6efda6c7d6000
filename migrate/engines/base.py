"""The engine interface: what the migration needs from a container engine.

Everything engine-specific (Docker's inspect JSON, API calls, paths of its data root) lives
in the engine module; the rest of the tool sees these frozen dataclasses only. ``raw`` fields
are opaque to everything except the engine that produced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from migrate.core.checks import CheckResult
from migrate.core.errors import MigrateError

if TYPE_CHECKING:
    from migrate.checkpoint.postcopy import PageServer


@dataclass(frozen=True)
class EngineInfo:
    engine: str  # "docker"
    version: str  # server version
    api_version: str
    # The engine's checkpoint/restore is switched on (Docker: the daemon's experimental mode).
    checkpoint_enabled: bool
    storage_driver: str
    # The engine can hand over the container's read-write layer from this storage driver
    # (Docker: overlay2, whose upperdir is a plain directory).
    rootfs_supported: bool
    data_root: str
    runtime: str  # default runtime name
    runc_version: str  # "" when unknown
    cgroup_version: str
    kernel: str
    os: str
    mem_total: int
    host_name: str
    # Containers outlive a daemon restart; None: unknown (a destination agent too old to say).
    live_restore: bool | None = None


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
class VolumeInfo:
    """A volume as the engine describes it (what recreating it elsewhere needs)."""

    name: str
    driver: str
    options: Mapping[str, str]
    labels: Mapping[str, str]
    mountpoint: str  # where its content is on this host ("" when unknown)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": self.driver,
            "options": dict(self.options),
            "labels": dict(self.labels),
        }

    @classmethod
    def from_wire(cls, data: Any) -> VolumeInfo:
        """ValueError unless ``data`` is a volume description of the right shape."""
        if not isinstance(data, Mapping):
            raise ValueError("volume must be an object")
        name, driver = data.get("name"), data.get("driver", "local")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"volume: bad name {name!r}")
        if not isinstance(driver, str):
            raise ValueError("volume: driver must be a string")
        maps = []
        for k in ("options", "labels"):
            v = data.get(k) or {}
            _want(
                isinstance(v, Mapping)
                and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()),
                f"volume.{k}",
                "an object of strings",
            )
            maps.append(dict(v))
        return cls(name, driver, maps[0], maps[1], "")


@dataclass(frozen=True)
class NetworkInfo:
    """A user-defined network: its name and the engine's create parameters (opaque outside
    the engine that made them, like ``ContainerSpec.raw``)."""

    name: str
    driver: str
    raw: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver, "raw": dict(self.raw)}

    @classmethod
    def from_wire(cls, data: Any) -> NetworkInfo:
        if not isinstance(data, Mapping):
            raise ValueError("network must be an object")
        name, driver, raw = data.get("name"), data.get("driver"), data.get("raw", {})
        if not isinstance(name, str) or not name or not isinstance(driver, str):
            raise ValueError("network: name and driver must be strings")
        if not isinstance(raw, Mapping):
            raise ValueError("network: raw must be an object")
        return cls(name, driver, dict(raw))


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
    # Every network the container is attached to (network_mode's one included): a container
    # can be on several user-defined networks, and each must exist on the destination.
    networks: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ContainerSpec:
        """Rebuild a spec that crossed the wire; ValueError if anything has the wrong shape
        (a hostile or broken peer must not reach the engine with it)."""
        if not isinstance(data, Mapping):
            raise ValueError("spec must be an object")
        d = dict(data)
        names = {f for f in cls.__dataclass_fields__}
        if set(d) - names:
            raise ValueError(f"spec: unexpected fields {sorted(set(d) - names)[:5]}")
        missing = {"id", "name", "image_id"} - set(d)
        if missing:
            raise ValueError(f"spec: missing fields {sorted(missing)}")
        for k in (
            "id",
            "name",
            "image_ref",
            "image_id",
            "hostname",
            "working_dir",
            "user",
            "restart_policy",
            "network_mode",
        ):
            _want(isinstance(d.setdefault(k, ""), str), k, "a string")
        for k in ("env", "cmd", "entrypoint", "networks"):
            v = d.get(k) or []
            _want(
                isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
                k,
                "a list of strings",
            )
            d[k] = tuple(v)
        labels = d.get("labels") or {}
        _want(
            isinstance(labels, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()),
            "labels",
            "an object of strings",
        )
        d["labels"] = dict(labels)
        for k in ("memory", "nano_cpus"):
            v = d.setdefault(k, 0)
            _want(isinstance(v, int) and not isinstance(v, bool) and v >= 0, k, "an integer")
        _want(isinstance(d.setdefault("tty", False), bool), "tty", "a boolean")
        d["ports"] = tuple(_records(PortBinding, d.get("ports"), "ports"))
        d["mounts"] = tuple(_records(MountSpec, d.get("mounts"), "mounts"))
        raw = d.get("raw") or {}
        _want(isinstance(raw, Mapping), "raw", "an object")
        d["raw"] = dict(raw)
        return cls(**d)


def _want(ok: bool, field_name: str, what: str) -> None:
    if not ok:
        raise ValueError(f"spec: {field_name} must be {what}")


def _records(kind: Any, items: Any, field_name: str) -> list[Any]:
    """Each item an object with exactly the (string / bool) fields of ``kind``."""
    items = items or []
    _want(isinstance(items, list | tuple), field_name, "a list")
    fields = kind.__dataclass_fields__
    out = []
    for it in items:
        _want(
            isinstance(it, Mapping) and set(it) <= set(fields),
            field_name,
            f"a list of objects with fields {sorted(fields)}",
        )
        for k, v in it.items():
            want_t = bool if fields[k].type in ("bool", bool) else str
            _want(isinstance(v, want_t), f"{field_name}.{k}", want_t.__name__)
        try:
            out.append(kind(**it))
        except TypeError as e:
            raise ValueError(f"spec: {field_name}: {e}") from None
    return out


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
class ProcessInfo:
    """One process of a container, as the host sees it."""

    pid: int  # in the host's PID namespace
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    command: str


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None: it did not finish within the timeout
    output: str  # the tail of stdout and stderr, interleaved


class EngineReadiness(Protocol):
    """How an engine judges a daemon of its kind for `migrate check`: rows with their fixes."""

    def rows(self, info: EngineInfo | None, error: MigrateError | None) -> list[CheckResult]:
        """This host's daemon: its info, or the error that reaching it gave."""
        ...

    def remote_rows(self, info: EngineInfo | None, error: MigrateError | None) -> list[CheckResult]:
        """A destination's daemon, as its agent described it (fewer facts than our own)."""
        ...

    def runtime_row(self, runtime: str | None, info: EngineInfo | None) -> CheckResult:
        """The low-level runtime the checkpoints go through (its path on this host, if found)."""
        ...


class Engine(Protocol):
    name: str

    def info(self) -> EngineInfo: ...

    def refuse_unready(self, info: EngineInfo, *, destination: bool) -> None:
        """Raise the error (with its fix) that stops a migration this daemon cannot take part
        in as a source or, with ``destination``, as a destination."""
        ...

    # --- the engine's rules on what moves with a container (pure: no daemon is asked) ------

    def shares_network_namespace(self, spec: ContainerSpec) -> bool:
        """The container runs in another's network namespace (the host's, a container's)."""
        ...

    def user_networks(self, spec: ContainerSpec) -> list[str]:
        """The networks the container is on that the destination may lack (the engine's
        built-in ones excluded), each to be created there if missing."""
        ...

    def network_movable(self, net: NetworkInfo) -> bool:
        """The destination can recreate ``net`` as it is (it spans no other host)."""
        ...

    def volume_movable(self, vol: VolumeInfo) -> bool:
        """The volume's content is a plain directory of this host (its mountpoint)."""
        ...

    def anonymous_volume(self, name: str) -> bool:
        """A volume the engine named itself: a create makes a new one of its own."""
        ...

    def spec(self, ref: str) -> ContainerSpec: ...

    def state(self, ref: str) -> ContainerState: ...

    def exists(self, ref: str) -> bool: ...

    def image(self, ref: str) -> ImageInfo | None: ...

    def layers_present(self) -> set[str]: ...

    def save_image(self, refs: Iterable[str]) -> Iterator[bytes]: ...

    def save_missing_layers(
        self, refs: Iterable[str], present: set[str], stats: dict[str, int] | None = None
    ) -> Iterator[bytes]:
        """``save_image`` for a destination that has the layers (diff ids) in ``present``:
        the stream ``load_image`` there takes, without their content. ``stats`` counts
        ``layers_sent`` and ``layers_skipped``."""
        ...

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
        keep_volume_names: bool = False,
    ) -> str: ...

    def pause(self, ref: str) -> None: ...

    def unpause(self, ref: str) -> None: ...

    def remove(self, ref: str, *, force: bool = True) -> None: ...

    def kill(self, ref: str) -> None: ...

    def running_containers(self, labels: Mapping[str, str] | None = None) -> list[str]: ...

    def memory_usage(self, ref: str) -> int: ...

    def checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> None: ...

    def checkpoint_dir(self, ref: str, name: str) -> Path: ...

    def ensure_frozen(self, ref: str) -> None: ...

    def start_lazy_checkpoint(self, ref: str, image_dir: Path, work_dir: Path) -> PageServer: ...

    def staging_dir(self, ref: str, name: str) -> Path: ...

    def lazy_restore_blocker(self) -> str: ...

    def settle_restore_config(self) -> None:
        """Put the runtime's restore configuration right if an agent killed in the middle of
        a lazy restore left its settings there."""
        ...

    def start_from_checkpoint(
        self, ref: str, name: str, *, lazy: LazyRestore | None = None
    ) -> None: ...

    def exec_sessions(self, ref: str) -> list[str]: ...

    def processes(self, ref: str) -> list[ProcessInfo]: ...

    def exec(self, ref: str, argv: list[str], timeout: float) -> ExecResult: ...

    def remove_image(self, ref: str) -> bool: ...

    def log_file(self, ref: str) -> Path | None: ...

    def volume_exists(self, name: str) -> bool: ...

    def remove_volume(self, name: str) -> None: ...

    def volume(self, name: str) -> VolumeInfo | None: ...

    def network(self, name: str) -> NetworkInfo | None: ...

    def create_network(self, net: NetworkInfo) -> None: ...

    def remove_network(self, name: str) -> None: ...

    def create_volume(self, vol: VolumeInfo) -> VolumeInfo: ...


@dataclass(frozen=True)
class LazyRestore:
    """A restore whose lazy memory comes from a lazy-pages daemon listening in ``work_dir``
    (lazy_pages.py), not from the checkpoint the engine is given."""

    work_dir: Path
