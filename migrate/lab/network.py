"""The lab's network: the hosts' network namespaces, the veth pair between them and the
point-to-point links from the root namespace to each (see hosts.py for the layout)."""

from __future__ import annotations

import ipaddress

from migrate.core.errors import LabError
from migrate.lab.config import HOSTS, LabConfig
from migrate.lab.system import NETNS_DIR, ensure_netns, ip, ip_json, link_exists

LINK_IFACE = "lab0"  # host <-> host
MGMT_IFACE = "mgmt0"  # host <-> root namespace


def check_subnet_free(c: LabConfig) -> None:
    ours = {c.root_iface(h) for h in HOSTS}
    net = c.network
    for route in ip_json(["-4", "route", "show"]):
        dst, dev = str(route.get("dst", "")), str(route.get("dev", ""))
        if not dst or dst == "default" or dev in ours:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.overlaps(net):
            raise LabError(
                f"lab subnet {c.subnet} overlaps route {dst} on {dev or '?'}",
                hint="choose another --subnet (each lab needs its own)",
            )


def ensure_network(c: LabConfig) -> None:
    a, b = c.netns("a"), c.netns("b")
    for h in HOSTS:
        ensure_netns(c.netns(h))
    # host <-> host
    if not (link_exists(LINK_IFACE, a) and link_exists(LINK_IFACE, b)):
        for ns in (a, b):
            if link_exists(LINK_IFACE, ns):
                ip(["link", "del", LINK_IFACE], netns=ns)
        ip(
            [
                "link",
                "add",
                LINK_IFACE,
                "netns",
                a,
                "type",
                "veth",
                "peer",
                "name",
                LINK_IFACE,
                "netns",
                b,
            ]
        )
    prefix = c.network.prefixlen
    for h in HOSTS:
        ns, addr = c.netns(h), c.addr(h)
        ip(["link", "set", "lo", "up"], netns=ns)
        ip(["addr", "replace", f"{addr}/{prefix}", "dev", LINK_IFACE], netns=ns)
        ip(["link", "set", LINK_IFACE, "up"], netns=ns)
    # root <-> each host: point-to-point /32 routes, no bridge, no forwarding
    for h in HOSTS:
        ns, addr, rif = c.netns(h), c.addr(h), c.root_iface(h)
        if not (link_exists(rif) and link_exists(MGMT_IFACE, ns)):
            if link_exists(rif):
                ip(["link", "del", rif])
            if link_exists(MGMT_IFACE, ns):
                ip(["link", "del", MGMT_IFACE], netns=ns)
            ip(["link", "add", rif, "type", "veth", "peer", "name", MGMT_IFACE, "netns", ns])
        ip(["link", "set", MGMT_IFACE, "up"], netns=ns)
        ip(["route", "replace", f"{c.root_addr}/32", "dev", MGMT_IFACE, "src", addr], netns=ns)
        ip(["addr", "replace", f"{c.root_addr}/32", "dev", rif])
        ip(["link", "set", rif, "up"])
        ip(["route", "replace", f"{addr}/32", "dev", rif, "src", c.root_addr])


def remove_network(c: LabConfig) -> None:
    for h in HOSTS:
        # Delete links explicitly: a namespace still held by some process would keep
        # them (and their root-side peers) alive after `ip netns del`.
        ns = c.netns(h)
        if link_exists(c.root_iface(h)):
            ip(["link", "del", c.root_iface(h)])
        if (NETNS_DIR / ns).exists():
            if link_exists(LINK_IFACE, ns):
                ip(["link", "del", LINK_IFACE], netns=ns)
            ip(["netns", "del", ns])
