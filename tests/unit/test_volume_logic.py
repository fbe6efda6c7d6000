"""Pure logic of moving volumes: wire shape of a volume, pinning anonymous volumes."""

from __future__ import annotations

from typing import Any

import pytest

from migrate.engines.base import ContainerSpec, MountSpec, VolumeInfo
from migrate.engines.docker.spec import pin_anonymous_volumes


def _spec(*mounts: MountSpec) -> ContainerSpec:
    return ContainerSpec.from_wire(
        {"id": "x", "name": "n", "image_id": "i", "mounts": [m.__dict__ for m in mounts]}
    )


def test_volume_round_trips_over_the_wire() -> None:
    v = VolumeInfo("data", "local", {"o": "size=1m"}, {"team": "a"}, "/var/lib/x")
    back = VolumeInfo.from_wire(v.to_wire())
    assert back == VolumeInfo("data", "local", {"o": "size=1m"}, {"team": "a"}, "")


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "../etc"},
        {"name": ""},
        {"name": 3},
        {"name": "a", "labels": {"k": 1}},
        {"name": "a", "options": ["x"]},
        {"name": "a", "driver": None},
        "data",
    ],
)
def test_bad_volume_descriptions_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        VolumeInfo.from_wire(bad)


def test_anonymous_volumes_keep_their_names() -> None:
    anon = "a" * 64
    spec = _spec(
        MountSpec("volume", "/v/named", "/data", "named"),
        MountSpec("volume", "/v/anon1", "/anon", anon),
        MountSpec("volume", "/v/anon2", "/image-vol", "b" * 64, rw=False),
        MountSpec("bind", "/host", "/h"),
    )
    host: dict[str, Any] = {
        "Binds": ["named:/data:rw", "/host:/h"],
        "Mounts": [{"Type": "volume", "Target": "/anon"}],
    }
    pin_anonymous_volumes(host, spec)
    assert host["Binds"] == ["named:/data:rw", "/host:/h"]
    assert host["Mounts"] == [
        {"Type": "volume", "Target": "/anon", "Source": anon},
        {"Type": "volume", "Source": "b" * 64, "Target": "/image-vol", "ReadOnly": True},
    ]


def test_no_volumes_leave_the_host_config_alone() -> None:
    host: dict[str, Any] = {"Binds": None}
    pin_anonymous_volumes(host, _spec())
    assert "Mounts" not in host


def test_network_round_trips_and_bad_ones_are_refused() -> None:
    from migrate.engines.base import NetworkInfo

    n = NetworkInfo("net", "bridge", {"IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}})
    assert NetworkInfo.from_wire(n.to_wire()) == n
    for bad in (
        {"name": "", "driver": "bridge"},
        {"name": "n", "driver": 1},
        {"name": "n", "driver": "bridge", "raw": []},
        None,
    ):
        with pytest.raises(ValueError):
            NetworkInfo.from_wire(bad)
