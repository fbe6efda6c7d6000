"""Docker's rules on what moves with a container, and the create body (engines/docker/spec.py):
pure, so tested without a daemon."""

from __future__ import annotations

from typing import Any

import pytest

from migrate.engines.base import ContainerSpec, NetworkInfo, VolumeInfo
from migrate.engines.docker.spec import (
    anonymous_volume,
    create_request,
    network_movable,
    shares_network_namespace,
    spec_from_inspect,
    user_networks,
    volume_movable,
)


def _spec(mode: str, *networks: str, raw: dict[str, Any] | None = None) -> ContainerSpec:
    return ContainerSpec.from_wire(
        {
            "id": "c" * 64,
            "name": "web",
            "image_id": "sha256:i",
            "image_ref": "img:1",
            "hostname": "web",
            "network_mode": mode,
            "networks": list(networks),
            "raw": raw or {},
        }
    )


@pytest.mark.parametrize(
    ("mode", "shared"),
    [("host", True), ("container:db", True), ("bridge", False), ("none", False), ("app", False)],
)
def test_host_and_container_modes_share_a_namespace(mode: str, shared: bool) -> None:
    assert shares_network_namespace(mode) is shared


def test_user_networks_leave_out_dockers_own_and_keep_the_order() -> None:
    assert user_networks(_spec("app", "app", "bridge", "back")) == ["app", "back"]
    assert user_networks(_spec("bridge", "bridge", "back")) == ["back"]
    assert user_networks(_spec("default", "front")) == ["front"]


@pytest.mark.parametrize("mode", ["host", "none", "container:db"])
def test_no_user_networks_without_a_namespace_of_its_own(mode: str) -> None:
    assert user_networks(_spec(mode, "app")) == []


def test_only_bridge_networks_move() -> None:
    assert network_movable(NetworkInfo("app", "bridge"))
    assert not network_movable(NetworkInfo("ov", "overlay"))
    assert not network_movable(NetworkInfo("mv", "macvlan"))


@pytest.mark.parametrize(
    ("driver", "options", "movable"),
    [
        ("local", {}, True),
        ("local", {"o": "size=1m"}, True),
        ("local", {"device": "/dev/sdb1"}, False),
        ("local", {"type": "nfs", "o": "addr=1.2.3.4"}, False),
        ("rexray", {}, False),
    ],
)
def test_volumes_move_when_their_content_is_a_local_directory(
    driver: str, options: dict[str, str], movable: bool
) -> None:
    assert volume_movable(VolumeInfo("v", driver, options, {}, "/var/lib/v")) is movable


def test_anonymous_volume_names_are_64_hex_digits() -> None:
    assert anonymous_volume("0123456789abcdef" * 4)
    assert not anonymous_volume("data")
    assert not anonymous_volume("0123456789ABCDEF" * 4)
    assert not anonymous_volume("0123456789abcdef" * 4 + "0")


def _inspect(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "Id": "c" * 64,
        "Name": "/web",
        "Image": "sha256:i",
        "Config": {"Image": "img:1", "Hostname": "web", "Env": ["A=1"], "Labels": {"k": "v"}},
        "HostConfig": {
            "NetworkMode": "app",
            "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "always"},
            "ContainerIDFile": "/tmp/cid",
        },
        "Mounts": [{"Type": "volume", "Name": "data", "Destination": "/data", "RW": True}],
        "NetworkSettings": {
            "Networks": {
                "app": {"Aliases": ["cccccccccccc", "web"], "IPAddress": "10.5.0.7"},
                "bridge": {"IPAddress": "172.17.0.2"},
            }
        },
    }
    c.update(over)
    return c


def test_spec_from_inspect_maps_the_portable_fields() -> None:
    s = spec_from_inspect(_inspect())
    assert (s.name, s.image_ref, s.network_mode, s.restart_policy) == (
        "web",
        "img:1",
        "app",
        "always",
    )
    assert s.networks == ("app", "bridge")
    assert [(p.container_port, p.host_port) for p in s.ports] == [("80/tcp", "8080")]
    assert [(m.type, m.name, m.destination) for m in s.mounts] == [("volume", "data", "/data")]
    # The container's own id is no alias to carry; a user network's address is kept.
    assert s.raw["Endpoints"]["app"] == {
        "Aliases": ["web"],
        "IPAMConfig": {"IPv4Address": "10.5.0.7"},
    }
    assert s.raw["Endpoints"]["bridge"] == {"Aliases": None}


def test_create_request_keeps_a_fixed_address_only_where_the_network_takes_one() -> None:
    s = spec_from_inspect(_inspect())
    kw: dict[str, Any] = {
        "isolated": False,
        "labels": None,
        "volume_names": None,
        "keep_volume_names": False,
    }
    req = create_request(s, None, user_subnet=lambda n: True, **kw)
    assert req.network_mode == "app" and set(req.endpoints) == {"app", "bridge"}
    assert req.body["Image"] == "img:1" and req.body["Hostname"] == "web"
    assert "ContainerIDFile" not in req.body["HostConfig"]
    ep = req.body["NetworkingConfig"]["EndpointsConfig"]["app"]
    assert ep["IPAMConfig"] == {"IPv4Address": "10.5.0.7"}
    req = create_request(s, "img:2", user_subnet=lambda n: False, **kw)
    assert "IPAMConfig" not in req.body["NetworkingConfig"]["EndpointsConfig"]["app"]
    assert req.body["Image"] == "img:2"


def test_an_isolated_copy_is_on_no_network_and_publishes_nothing() -> None:
    s = spec_from_inspect(_inspect())
    req = create_request(
        s,
        None,
        isolated=True,
        labels={"migrate.drill": "1"},
        volume_names={"data": "data-drill"},
        keep_volume_names=False,
        user_subnet=lambda n: True,
    )
    host = req.body["HostConfig"]
    assert req.network_mode == "none" and "NetworkingConfig" not in req.body
    assert host["NetworkMode"] == "none" and host["PortBindings"] == {}
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert req.body["Labels"] == {"k": "v", "migrate.drill": "1"}


class _Api:
    def __init__(self, driver: str, experimental: bool) -> None:
        self._info = {"Driver": driver, "DockerRootDir": "/var/lib/docker", "MemTotal": 1}
        self._version = {"Version": "20.10.24", "ApiVersion": "1.41", "Experimental": experimental}

    def info(self) -> dict[str, Any]:
        return self._info

    def version(self) -> dict[str, Any]:
        return self._version


@pytest.mark.parametrize(
    ("driver", "experimental"), [("overlay2", True), ("vfs", True), ("overlay2", False)]
)
def test_engine_info_derives_the_neutral_fields(driver: str, experimental: bool) -> None:
    from migrate.engines.docker.engine import DockerEngine

    eng = object.__new__(DockerEngine)
    eng.api, eng._info = _Api(driver, experimental), None
    info = eng.info()
    assert info.checkpoint_enabled is experimental
    assert info.storage_driver == driver
    assert info.rootfs_supported is (driver == "overlay2")
