"""`migrate run` on a user-defined bridge network (issue 7): the network is recreated on B
with its subnet, gateway, options and labels; the container keeps its address and aliases,
another container on B reaches it by name, and its published port answers on B's address."""

from __future__ import annotations

import random
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker.errors
import docker.types
import pytest
from conftest import AB

SERVER = (
    "mkdir -p /www && echo served-from-memory-$(cat /proc/sys/kernel/random/uuid) > /www/i && "
    "httpd -f -p 80 -h /www"
)


@pytest.fixture
def network(docker_a: Any, docker_b: Any, container_name: str) -> Iterator[str]:
    name = f"mtn-{uuid.uuid4().hex[:8]}"
    third = random.randint(1, 250)
    docker_a.networks.create(
        name,
        driver="bridge",
        options={"com.docker.network.driver.mtu": "1400"},
        labels={"team": "net"},
        ipam=docker.types.IPAMConfig(
            pool_configs=[
                docker.types.IPAMPool(subnet=f"172.29.{third}.0/24", gateway=f"172.29.{third}.1")
            ]
        ),
    )
    yield name
    for client in (docker_a, docker_b):
        for c in client.containers.list(all=True, filters={"network": name}):
            c.remove(force=True)
        try:
            client.networks.get(name).remove()
        except docker.errors.NotFound:
            pass


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def test_network_ip_aliases_name_and_port_on_b(
    ab: AB,
    network: str,
    lab_env: dict[str, str],
) -> None:
    port = random.randint(20000, 29999)
    c = ab.docker_a.containers.create(
        ab.test_image,
        ["sh", "-c", SERVER],
        name=ab.container_name,
        ports={"80/tcp": port},
        network=network,
    )
    ab.docker_a.networks.get(network).disconnect(c)
    ab.docker_a.networks.get(network).connect(c, aliases=["svc-alias"])
    c.start()
    a_url = f"http://{lab_env['MIGRATE_LAB_A_ADDR']}:{port}/i"
    deadline = time.monotonic() + 20
    while True:
        try:
            body = _get(a_url)
            break
        except OSError:
            assert time.monotonic() < deadline, "server did not start on A"
            time.sleep(0.2)
    ip_a = ab.docker_a.api.inspect_container(ab.container_name)["NetworkSettings"]["Networks"][
        network
    ]["IPAddress"]
    src_net = ab.docker_a.api.inspect_network(network)

    p = ab.run()
    assert p.returncode == 0, p.stderr

    net_b = ab.docker_b.api.inspect_network(network)
    assert net_b["IPAM"]["Config"] == src_net["IPAM"]["Config"]
    assert net_b["Options"] == src_net["Options"] and net_b["Labels"] == {"team": "net"}
    ep = ab.docker_b.api.inspect_container(ab.container_name)["NetworkSettings"]["Networks"][
        network
    ]
    assert ep["IPAddress"] == ip_a
    assert "svc-alias" in (ep["Aliases"] or [])
    # The server answers through the port published on B (from the root namespace).
    assert _get(f"http://{lab_env['MIGRATE_LAB_B_ADDR']}:{port}/i") == body
    for host in (ab.container_name, "svc-alias"):
        out = ab.docker_b.containers.run(
            ab.test_image, ["wget", "-qO-", f"http://{host}/i"], network=network, remove=True
        )
        assert out.decode() == body


def test_rollback_removes_the_network_it_created(
    ab: AB,
    network: str,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "100000"], name=ab.container_name, network=network, detach=True
    )
    p = ab.run(
        env_extra={"MIGRATE_FAULTS": "agent:restore_fail"},
    )
    assert p.returncode == 1, p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    with pytest.raises(docker.errors.NotFound):
        ab.docker_b.networks.get(network)


def test_container_on_two_networks_keeps_both(
    ab: AB,
    network: str,
) -> None:
    """Connected to a second network after its creation (with a fixed address and an alias):
    both networks are created on B and the container is on both, with both addresses, and is
    reached by name on the second one. Without this the second network was silently lost."""
    second = f"{network}-2"
    third = random.randint(1, 250)
    ab.docker_a.networks.create(
        second,
        driver="bridge",
        ipam=docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=f"172.28.{third}.0/24")]
        ),
    )
    try:
        ab.docker_a.containers.run(
            ab.test_image,
            ["sh", "-c", SERVER],
            name=ab.container_name,
            network=network,
            detach=True,
        )
        ab.docker_a.networks.get(second).connect(
            ab.container_name, aliases=["svc-two"], ipv4_address=f"172.28.{third}.77"
        )
        nets_a = ab.docker_a.api.inspect_container(ab.container_name)["NetworkSettings"]["Networks"]
        body = ""
        deadline = time.monotonic() + 20
        while not body:
            res = ab.docker_a.containers.get(ab.container_name).exec_run(["cat", "/www/i"])
            body = res.output.decode() if res.exit_code == 0 else ""
            assert body or time.monotonic() < deadline, "server did not start on A"
            time.sleep(0.2)

        p = ab.run()
        assert p.returncode == 0, p.stderr

        nets_b = ab.docker_b.api.inspect_container(ab.container_name)["NetworkSettings"]["Networks"]
        assert set(nets_b) == {network, second}
        for net in (network, second):
            assert nets_b[net]["IPAddress"] == nets_a[net]["IPAddress"], net
        assert nets_b[second]["IPAddress"] == f"172.28.{third}.77"
        assert "svc-two" in (nets_b[second]["Aliases"] or [])
        out = ab.docker_b.containers.run(
            ab.test_image, ["wget", "-qO-", "http://svc-two/i"], network=second, remove=True
        )
        assert out.decode() == body
    finally:
        for client in (ab.docker_a, ab.docker_b):
            for c in client.containers.list(all=True, filters={"name": ab.container_name}):
                c.remove(force=True)
            try:
                client.networks.get(second).remove()
            except docker.errors.NotFound:
                pass
