"""Images for the lab, built offline (there is no registry): a busybox-static rootfs imported
as ``migrate-test/busybox:1``, and images derived from it with ``docker build``.

The base layer's tar is deterministic (sorted members, fixed owners and times), so it has the
same diff ID wherever it is built; the image IDs still differ between daemons (the config
records when it was imported). :func:`copy_image` moves an image with its ID intact.
"""

from __future__ import annotations

import io
import logging
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.errors import LabError
from migrate.lab import docker_client

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary
BUSYBOX_TAG = "migrate-test/busybox:1"
TEST_LABEL = "org.migrate.test"
IMAGE_MTIME = 1_700_000_000  # fixed: the layer digest must not depend on the build time
BUILD_TIMEOUT_S = 300
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "root": 0o700, "home": 0o755, "tmp": 0o1777, "var": 0o755,
    "var/tmp": 0o1777, "var/www": 0o755, "var/log": 0o755, "run": 0o755, "proc": 0o555,
    "sys": 0o555, "dev": 0o755, "data": 0o755,
}  # fmt: skip
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/nsswitch.conf": "hosts: files dns\n",
    "var/www/index.html": "<h1>migrate test</h1>\n",
}


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    id: str
    layers: tuple[str, ...]  # diff IDs, base first


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """Applet paths (``usr/bin/awk``, ``sbin/ip``...) relative to /, as busybox lists them."""
    r = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30
    )
    return sorted({ln.strip().lstrip("/") for ln in r.stdout.splitlines() if ln.strip()})


def busybox_rootfs_tar(busybox: Path = BUSYBOX) -> bytes:
    """A deterministic rootfs tar: /bin/busybox, its applet links, a minimal /etc."""
    if not busybox.exists():
        raise LabError(f"{busybox} is missing", hint="apt-get install busybox-static")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, IMAGE_MTIME, 0, 0
            ti.uname = ti.gname = "root"
            ti.linkname = link
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data) if data else None)

        for d, mode in sorted(DIRS.items()):
            add(d, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for name, text in sorted(FILES.items()):
            add(name, tarfile.REGTYPE, 0o640 if name == "etc/shadow" else 0o644, text.encode())
        for applet in busybox_applets(busybox):
            if applet == "bin/busybox" or applet.split("/")[0] not in ("bin", "sbin", "usr"):
                continue
            if str(Path(applet).parent) not in DIRS:
                continue
            add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
    return buf.getvalue()


def _info(client: Any, tag: str) -> ImageInfo:
    img = client.images.get(tag)
    layers = img.attrs.get("RootFS", {}).get("Layers") or []
    return ImageInfo(tag=tag, id=img.id, layers=tuple(layers))


def _has(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_busybox_image(docker_host: str, tag: str = BUSYBOX_TAG) -> ImageInfo:
    """Import the busybox image into that daemon unless it already has ``tag``."""
    client = docker_client(docker_host, timeout=BUILD_TIMEOUT_S)
    try:
        if not _has(client, tag):
            repo, _, version = tag.rpartition(":")
            client.api.import_image_from_data(
                busybox_rootfs_tar(),
                repository=repo,
                tag=version,
                changes=[
                    f"ENV PATH={CONTAINER_PATH}",
                    'CMD ["/bin/sh"]',
                    "WORKDIR /",
                    f"LABEL {TEST_LABEL}=1",
                ],
            )
            log.info("imported %s into %s", tag, docker_host)
        return _info(client, tag)
    finally:
        client.close()


def build_image(
    docker_host: str,
    tag: str,
    base: str = BUSYBOX_TAG,
    files: Mapping[str, bytes] | None = None,
    run: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> ImageInfo:
    """``docker build`` offline: FROM ``base`` (which must be present), then one COPY per
    file in ``files`` (path in the image -> content), one RUN per shell command in ``run``,
    then ``extra`` Dockerfile lines (CMD, ENV, EXPOSE...). Rebuilds are cached by the daemon."""
    lines = [f"FROM {base}"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (dest, data) in enumerate(sorted((files or {}).items())):
            ti = tarfile.TarInfo(f"ctx/{i}")
            ti.size, ti.mtime, ti.mode = len(data), IMAGE_MTIME, 0o644
            tar.addfile(ti, io.BytesIO(data))
            lines.append(f"COPY ctx/{i} {dest}")
        lines += [f"RUN {cmd}" for cmd in run]
        lines += list(extra)
        dockerfile = ("\n".join(lines) + "\n").encode()
        ti = tarfile.TarInfo("Dockerfile")
        ti.size, ti.mtime = len(dockerfile), IMAGE_MTIME
        tar.addfile(ti, io.BytesIO(dockerfile))
    buf.seek(0)
    client = docker_client(docker_host, timeout=BUILD_TIMEOUT_S)
    try:
        if not _has(client, base):
            raise LabError(f"base image {base} is not on {docker_host}",
                           hint="build it first (ensure_busybox_image)")  # fmt: skip
        import docker.errors

        try:
            client.images.build(
                fileobj=buf, custom_context=True, tag=tag, pull=False, rm=True, forcerm=True
            )
        except docker.errors.BuildError as e:
            tail = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
            raise LabError(f"docker build of {tag} failed: {e}",
                           details={"log_tail": tail[-2000:]}) from e  # fmt: skip
        return _info(client, tag)
    finally:
        client.close()


def copy_image(src_docker_host: str, dst_docker_host: str, tag: str) -> ImageInfo:
    """``docker save | docker load`` between two daemons: the image keeps its ID."""
    src = docker_client(src_docker_host, timeout=BUILD_TIMEOUT_S)
    dst = docker_client(dst_docker_host, timeout=BUILD_TIMEOUT_S)
    try:
        data = b"".join(src.images.get(tag).save(named=True))
        dst.images.load(data)
        return _info(dst, tag)
    finally:
        src.close()
        dst.close()


def remove_image(docker_host: str, tag: str) -> None:
    import docker.errors

    client = docker_client(docker_host)
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()
