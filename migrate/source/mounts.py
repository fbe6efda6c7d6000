"""What a migrating container takes along besides its layer and memory: its volumes, its bind
mounts (per --bind-mounts) and its user-defined networks; each refused here, before anything
is touched, when it cannot move (docs/mounts-and-networks.md)."""

from __future__ import annotations

from pathlib import Path

from migrate.core.errors import Unsupported
from migrate.engines.base import ContainerSpec, Engine, NetworkInfo, VolumeInfo
from migrate.source.precheck import refuse_shared_network


def check_supported(engine: Engine, spec: ContainerSpec, bind_mounts: str) -> None:
    for m in spec.mounts:
        if m.type == "bind" and bind_mounts == "refuse":
            raise Unsupported(
                f"{spec.name} bind-mounts {m.source} at {m.destination}: a host path, "
                "which does not move with the container by default",
                hint="use --bind-mounts same-path if that path holds the same data on the "
                "destination (shared storage), or --bind-mounts copy to move its content "
                "to the same path there",
            )
    refuse_shared_network(
        engine, spec, hint="only bridge, user-defined and none networks can be migrated"
    )


def movable_volumes(engine: Engine, spec: ContainerSpec) -> list[VolumeInfo]:
    """The container's volumes, each one that can move (local driver, content in a
    directory on this host): refused otherwise, before anything is touched."""
    out = []
    for m in spec.mounts:
        if m.type != "volume":
            continue
        v = engine.volume(m.name) if m.name else None
        if v is None:
            raise Unsupported(f"{spec.name}: the volume at {m.destination} is gone")
        if not engine.volume_movable(v):
            raise Unsupported(
                f"{spec.name} uses volume {v.name} (driver {v.driver}, options "
                f"{dict(v.options)}): its content is not in a directory of this host",
                hint="only local volumes without device options move; copy that "
                "volume's data yourself, or use a plain local volume",
            )
        if not Path(v.mountpoint).is_dir():
            raise Unsupported(f"volume {v.name} has no directory at {v.mountpoint}")
        out.append(v)
    return out


def bind_sources(spec: ContainerSpec, bind_mounts: str) -> list[str]:
    """The bind-mounted host paths; with ``copy``, each must be a directory."""
    out = []
    for m in spec.mounts:
        if m.type != "bind":
            continue
        src = Path(m.source)
        if bind_mounts == "copy" and not src.is_dir():
            raise Unsupported(
                f"{spec.name} bind-mounts {m.source}, which is not a directory: "
                "--bind-mounts copy moves directories only",
                hint="put the file in a directory and bind-mount that, or use "
                "--bind-mounts same-path after copying it yourself",
            )
        out.append(m.source)
    return out


def movable_networks(engine: Engine, spec: ContainerSpec) -> list[NetworkInfo]:
    """The user-defined networks the container is on (its network mode's and any it was
    connected to later), each to be created on the destination if missing there."""
    out = []
    for name in engine.user_networks(spec):
        net = engine.network(name)
        if net is None:
            raise Unsupported(f"{spec.name}'s network {name} is gone on the source")
        if not engine.network_movable(net):
            raise Unsupported(
                f"{spec.name} is on network {name} with driver {net.driver}",
                hint="only bridge networks (the default and user-defined ones) migrate; "
                f"`{engine.name} network disconnect {name} {spec.name}` first if it can do without",
            )
        out.append(net)
    return out


def binds_wire(binds: list[str], mode: str) -> list[dict[str, str]]:
    return [{"path": p, "mode": mode} for p in binds]
