"""Docker's inspect JSON and create body, mapped to and from the engine-neutral types of
engines/base.py; and Docker's rules about which network modes, networks and volumes are the
container's own. Pure: no daemon is asked here (engine.py does the asking)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from migrate.engines.base import ContainerSpec, MountSpec, NetworkInfo, PortBinding, VolumeInfo

# Fields of Config / HostConfig that describe the old container instance, not its intent.
_DROP_CONFIG = ("Image",)
_DROP_HOSTCONFIG = ("ContainerIDFile",)

# Docker's own networks: present on every daemon, never created or carried.
BUILTIN_NETWORKS = ("bridge", "host", "none")
# Network modes that attach no network of their own ("" and "default" mean bridge).
_NO_USER_NETWORK = ("", "default", *BUILTIN_NETWORKS)


def shares_network_namespace(mode: str) -> bool:
    """The container runs in another's network namespace (the host's or a container's)."""
    return mode.startswith("container:") or mode == "host"


def user_networks(spec: ContainerSpec) -> list[str]:
    """The user-defined networks the container is on: its network mode's and any it was
    connected to later (none when its namespace is the host's, a container's or none)."""
    mode = spec.network_mode
    if mode in ("host", "none") or mode.startswith("container:"):
        return []
    names = dict.fromkeys([mode, *spec.networks])
    return [n for n in names if n not in _NO_USER_NETWORK]


def network_movable(net: NetworkInfo) -> bool:
    """A network the destination can recreate as it is: a bridge (the default and
    user-defined ones); overlay, macvlan and the like span or touch more than one host."""
    return net.driver == "bridge"


def volume_movable(vol: VolumeInfo) -> bool:
    """A volume whose content is a plain directory of this host: the local driver without
    device options (those mount a device or a network file system)."""
    return vol.driver == "local" and "device" not in vol.options and "type" not in vol.options


def anonymous_volume(name: str) -> bool:
    """Docker names anonymous volumes with 64 hex digits; the create makes a new one."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def spec_from_inspect(c: Mapping[str, Any]) -> ContainerSpec:
    """A container's spec from its `docker inspect` JSON."""
    cfg = dict(c.get("Config") or {})
    host = dict(c.get("HostConfig") or {})
    ports: list[PortBinding] = []
    for cport, bindings in sorted((host.get("PortBindings") or {}).items()):
        for b in bindings or []:
            ports.append(PortBinding(cport, str(b.get("HostIp", "")), str(b.get("HostPort", ""))))
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
            "Aliases": [a for a in (ep.get("Aliases") or []) if not c["Id"].startswith(a)] or None,
        }
        # Keep the address where the destination's network allows it (create() drops it
        # when that network has no user-configured subnet).
        ipam = dict(ep.get("IPAMConfig") or {})
        if ep.get("IPAddress") and net not in BUILTIN_NETWORKS:
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


@dataclass(frozen=True)
class CreateRequest:
    """What `docker create` is given: the body, and the networks to connect before the start
    (the create API takes one network)."""

    body: dict[str, Any]
    network_mode: str
    endpoints: dict[str, Any]


def create_request(
    spec: ContainerSpec,
    image: str | None,
    *,
    isolated: bool,
    labels: Mapping[str, str] | None,
    volume_names: Mapping[str, str] | None,
    keep_volume_names: bool,
    user_subnet: Callable[[str], bool],
) -> CreateRequest:
    """The create body for a container that matches ``spec`` (see DockerEngine.create for
    the options). ``user_subnet(network)``: whether that network of this daemon takes fixed
    addresses."""
    cfg = {k: v for k, v in dict(spec.raw.get("Config") or {}).items() if k not in _DROP_CONFIG}
    host = {
        k: v for k, v in dict(spec.raw.get("HostConfig") or {}).items() if k not in _DROP_HOSTCONFIG
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
        rename_volumes(host, volume_names)
    if keep_volume_names:
        pin_anonymous_volumes(host, spec)
    body: dict[str, Any] = dict(cfg)
    body["HostConfig"] = host
    endpoints = dict(spec.raw.get("Endpoints") or {})
    if endpoints and mode not in _NO_USER_NETWORK and not mode.startswith("container:"):
        ep = dict(endpoints.get(mode) or {})
        if ep.get("IPAMConfig") and not user_subnet(mode):
            ep.pop("IPAMConfig")
        body["NetworkingConfig"] = {"EndpointsConfig": {mode: ep}}
    return CreateRequest(body, mode, endpoints)


def pin_anonymous_volumes(host: dict[str, Any], spec: ContainerSpec) -> None:
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


def rename_volumes(host: dict[str, Any], names: Mapping[str, str]) -> None:
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
