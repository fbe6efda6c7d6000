"""Real applications move with `migrate run` (issue 7, acceptance 1). Their images are built
here from Debian's packages (unpacked .debs plus this host's libraries, no registry:
migrate.lab.images.build_debian_app_image): Redis keeps every acknowledged key and accepts
writes, nginx (master and workers, `user root;`) serves through its published port on B, and
PostgreSQL (non-root processes: CRIU's prlimit needs CAP_SYS_RESOURCE, absent in this sandbox)
is refused by the precheck naming the reason, its data untouched. A running `docker exec`
session is named by the precheck too."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from conftest import AB

from migrate.checkpoint.criu import has_cap_sys_resource
from migrate.lab.images import build_debian_app_image

NGINX_CONF = b"""user root;
worker_processes 2;
daemon off;
pid /run/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {
        listen 80;
        root /srv/www;
        location / { }
    }
}
"""
PASSWD = b"""root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
"""
GROUP = b"root:x:0:\npostgres:x:999:\nnogroup:x:65534:\n"
PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="module")
def redis_image(lab: Any, test_image: str) -> str:
    tag = "migrate-test/redis:1"
    build_debian_app_image(
        lab.host("a").docker_host,
        tag,
        packages=["redis-server", "redis-tools", "libjemalloc2", "liblzf1"],
        binaries=["/usr/bin/redis-server", "/usr/bin/redis-cli"],
        extra=[
            'CMD ["redis-server", "--save", "", "--appendonly", "no", '
            '"--protected-mode", "no", "--bind", "0.0.0.0"]'
        ],
    )
    return tag


@pytest.fixture(scope="module")
def nginx_image(lab: Any, test_image: str) -> str:
    tag = "migrate-test/nginx:1"
    build_debian_app_image(
        lab.host("a").docker_host,
        tag,
        packages=["nginx", "nginx-common"],
        binaries=["/usr/sbin/nginx"],
        files={"/etc/nginx/nginx.conf": NGINX_CONF, "/srv/www/index.html": b"served by nginx\n"},
        extra=['CMD ["nginx"]'],
    )
    return tag


@pytest.fixture(scope="module")
def postgres_image(lab: Any, test_image: str) -> str:
    tag = "migrate-test/postgres:1"
    build_debian_app_image(
        lab.host("a").docker_host,
        tag,
        # Its less common libraries from their packages too, so that the host needs only
        # Debian's base libraries (the rest is copied from the host by ldd).
        packages=[
            "postgresql-15",
            "postgresql-client-15",
            "libpq5",
            "libicu72",
            "libxml2",
            "libldap-2.5-0",
            "libsasl2-2",
        ],
        binaries=[f"{PG_BIN}/postgres", f"{PG_BIN}/initdb", f"{PG_BIN}/psql", f"{PG_BIN}/pg_ctl"],
        files={"/etc/passwd": PASSWD, "/etc/group": GROUP},
        extra=[
            "USER postgres",
            f'CMD ["sh", "-c", "{PG_BIN}/initdb -D /tmp/pg --no-locale -E UTF8 -A trust '
            f"-U postgres >/tmp/initdb.log 2>&1 && exec {PG_BIN}/postgres -D /tmp/pg -k /tmp "
            '-c listen_addresses=127.0.0.1"]',
        ],
    )
    return tag


def _exec(client: Any, name: str, argv: list[str]) -> tuple[int, str]:
    r = client.containers.get(name).exec_run(argv)
    return r.exit_code, r.output.decode(errors="replace")


def _wait(pred: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _redis(client: Any, name: str, *args: str) -> str:
    code, out = _exec(client, name, ["redis-cli", *args])
    assert code == 0, out
    return out.strip()


def test_redis_keeps_acknowledged_keys(
    migrate_on_a: Any,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    redis_image: str,
) -> None:
    docker_a.containers.run(redis_image, name=container_name, detach=True)
    _wait(
        lambda: _exec(docker_a, container_name, ["redis-cli", "PING"])[1].strip() == "PONG", "redis"
    )
    n = 2000
    script = (
        f'i=1; while [ $i -le {n} ]; do echo "SET key:$i value-$i"; i=$((i+1)); done | redis-cli'
    )
    code, out = _exec(docker_a, container_name, ["sh", "-c", script])
    assert code == 0 and out.split() == ["OK"] * n, out[-500:]  # every write acknowledged
    _redis(docker_a, container_name, "RPUSH", "list", "a", "b", "c")
    run_id = _redis(docker_a, container_name, "INFO", "server")
    run_id = next(ln for ln in run_id.splitlines() if ln.startswith("run_id:"))

    p = migrate_on_a("run", container_name, *migrate_args, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "migrated"

    info = _redis(docker_b, container_name, "INFO", "server")
    assert run_id in info, "redis restarted on B instead of being restored"
    assert _redis(docker_b, container_name, "DBSIZE") == str(n + 1)
    script = f'i=1; while [ $i -le {n} ]; do echo "GET key:$i"; i=$((i+1)); done | redis-cli'
    code, out = _exec(docker_b, container_name, ["sh", "-c", script])
    assert code == 0 and out.split() == [f"value-{i}" for i in range(1, n + 1)]
    assert _redis(docker_b, container_name, "LRANGE", "list", "0", "-1").split() == ["a", "b", "c"]
    assert _redis(docker_b, container_name, "SET", "after", "move") == "OK"
    assert _redis(docker_b, container_name, "GET", "after") == "move"


def _top_pids(client: Any, name: str) -> list[tuple[str, str]]:
    procs = client.containers.get(name).top(ps_args="-o pid,args")["Processes"]
    return sorted((p[0], p[1]) for p in procs)


def test_nginx_serves_through_published_port_on_b(
    lab_env: dict[str, str],
    migrate_on_a: Any,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    nginx_image: str,
    run_on_a: Any,
) -> None:
    port = 18180
    docker_a.containers.run(nginx_image, name=container_name, detach=True, ports={"80/tcp": port})
    a_addr, b_addr = lab_env["MIGRATE_LAB_A_ADDR"], lab_env["MIGRATE_LAB_B_ADDR"]

    def serves(addr: str) -> bool:
        # (no -T: busybox wget crashes with it here; the run has its own timeout)
        try:
            r = run_on_a(["busybox", "wget", "-qO-", f"http://{addr}:{port}/"], timeout=20)
        except subprocess.TimeoutExpired:
            return False
        return r.stdout == "served by nginx\n"

    _wait(lambda: len(_top_pids(docker_a, container_name)) == 3, "nginx master + 2 workers")
    _wait(lambda: serves(a_addr), "nginx on A")
    before = _top_pids(docker_a, container_name)
    assert sum("worker process" in cmd for _, cmd in before) == 2, before

    p = migrate_on_a("run", container_name, *migrate_args)
    assert p.returncode == 0, p.stderr
    # The same master and workers, restored with their command lines (not started anew).
    assert [cmd for _, cmd in _top_pids(docker_b, container_name)] == [c for _, c in before]
    # Published port on B, reached from host A over the lab network.
    _wait(lambda: serves(b_addr), "nginx through B's published port", timeout=15)
    for _ in range(5):  # several requests: the workers take turns
        assert serves(b_addr)


def test_postgres_is_refused_with_the_reason(
    migrate_on_a: Any,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    postgres_image: str,
    tmp_path: Any,
) -> None:
    if has_cap_sys_resource():
        pytest.skip("this host has CAP_SYS_RESOURCE: PostgreSQL is not refused here")
    docker_a.containers.run(postgres_image, name=container_name, detach=True)
    psql = [f"{PG_BIN}/psql", "-h", "/tmp", "-U", "postgres", "-tA", "-c"]
    _wait(
        lambda: _exec(docker_a, container_name, [*psql, "SELECT 1"])[0] == 0, "postgres", timeout=60
    )
    code, out = _exec(
        docker_a, container_name, [*psql, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n"]
    )
    assert code == 0, out
    postmaster = [p for p in _top_pids(docker_a, container_name) if "postgres -D" in p[1]]
    assert len(postmaster) == 1

    p = migrate_on_a("run", container_name, *migrate_args)
    assert p.returncode == 3, p.stderr  # refused by the precheck: nothing touched
    assert "another user" in p.stderr and "CAP_SYS_RESOURCE" in p.stderr, p.stderr
    assert "postgres" in p.stderr  # names the processes
    c = docker_a.containers.get(container_name)
    assert c.status == "running"
    now = [p for p in _top_pids(docker_a, container_name) if "postgres -D" in p[1]]
    assert now == postmaster  # the same postmaster: never restarted
    code, out = _exec(docker_a, container_name, [*psql, "SELECT count(*), sum(n) FROM t"])
    assert (code, out.strip()) == (0, "1000|500500")
    assert not docker_b.containers.list(all=True, filters={"name": container_name})
    # `migrate export` runs the same check before freezing anything.
    p = migrate_on_a("export", container_name, "-o", str(tmp_path / "pg.tar.zst"))
    assert p.returncode == 3, p.stderr
    assert "another user" in p.stderr and not (tmp_path / "pg.tar.zst").exists()
    assert [p for p in _top_pids(docker_a, container_name) if "postgres -D" in p[1]] == postmaster


def test_running_exec_session_is_named(
    ab: AB,
) -> None:
    c = ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    eid = ab.docker_a.api.exec_create(c.id, ["sleep", "777"])["Id"]
    ab.docker_a.api.exec_start(eid, detach=True)
    _wait(lambda: ab.docker_a.api.exec_inspect(eid)["Running"], "the exec session")
    p = ab.run()
    assert p.returncode == 3, p.stderr
    assert "docker exec" in p.stderr and "sleep 777" in p.stderr, p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert not ab.docker_b.containers.list(all=True, filters={"name": ab.container_name})
