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

from migrate.core.errors import LabError
from migrate.fs.files import atomic_write
from migrate.lab.dockerd import docker_client

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary
BUSYBOX_TAG = "migrate-test/busybox:1"
TEST_LABEL = "org.migrate.test"
IMAGE_MTIME = 1_700_000_000  # fixed: the layer digest must not depend on the build time
BUILD_TIMEOUT_S = 300
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DIRS = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "root": 0o700,
    "home": 0o755,
    "tmp": 0o1777,
    "var": 0o755,
    "var/tmp": 0o1777,
    "var/www": 0o755,
    "var/log": 0o755,
    "run": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "data": 0o755,
}
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
    context_tars: Mapping[str, bytes] | None = None,
) -> ImageInfo:
    """``docker build`` offline: FROM ``base`` (which must be present), one ADD per tar in
    ``context_tars`` (directory in the image -> tar, unpacked there), one COPY per file in
    ``files`` (path in the image -> content), one RUN per shell command in ``run``, then
    ``extra`` Dockerfile lines (CMD, ENV, EXPOSE...). Rebuilds are cached by the daemon."""
    lines = [f"FROM {base}"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (dest, data) in enumerate(sorted((context_tars or {}).items())):
            ti = tarfile.TarInfo(f"ctx/layer{i}.tar")
            ti.size, ti.mtime, ti.mode = len(data), IMAGE_MTIME, 0o644
            tar.addfile(ti, io.BytesIO(data))
            lines.append(f"ADD ctx/layer{i}.tar {dest}")
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
            raise LabError(
                f"base image {base} is not on {docker_host}",
                hint="build it first (ensure_busybox_image)",
            )
        import docker.errors

        try:
            client.images.build(
                fileobj=buf, custom_context=True, tag=tag, pull=False, rm=True, forcerm=True
            )
        except docker.errors.BuildError as e:
            tail = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
            raise LabError(
                f"docker build of {tag} failed: {e}", details={"log_tail": tail[-2000:]}
            ) from e
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


# --- applications from Debian's packages --------------------------------------------------------

DEB_ARCHIVES = Path("/var/cache/apt/archives")
DEB_CACHE = Path("/var/cache/migrate-lab/debs")
LIB_DIRS = ("lib", "lib64", "usr/lib", "usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def find_deb(package: str, cache: Path = DEB_CACHE) -> Path:
    """The .deb of ``package``: apt's own cache first, then ours; else `apt-get download` (the
    ordinary client, from the sources this host already uses) into ours."""
    for d in (DEB_ARCHIVES, cache):
        found = sorted(d.glob(f"{package}_*.deb")) if d.is_dir() else []
        if found:
            return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["apt-get", "download", package],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    found = sorted(cache.glob(f"{package}_*.deb"))
    if p.returncode != 0 or not found:
        raise LabError(
            f"cannot get the Debian package {package}: {p.stderr.strip()[-300:]}",
            hint="run `apt-get update` once, then retry",
        )
    return found[-1]


def _needed_libs(root: Path, binaries: Sequence[str]) -> dict[str, Path]:
    """Shared libraries the ELF ``binaries`` (paths inside ``root``) need and ``root`` lacks:
    path inside the image -> the host's file. The packages are Debian 12's, like this host."""
    lib_path = ":".join(str(root / d) for d in LIB_DIRS)
    need: dict[str, Path] = {}
    missing: list[str] = []
    for b in binaries:
        p = subprocess.run(
            ["ldd", str(root / b.lstrip("/"))],
            capture_output=True,
            text=True,
            env={"LD_LIBRARY_PATH": lib_path},
            timeout=60,
            check=False,
        )
        for line in p.stdout.splitlines():
            parts = line.split()
            if "not found" in line:
                missing.append(parts[0])
            elif "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                path = parts[2]
            elif parts and parts[0].startswith("/"):
                path = parts[0]  # the dynamic loader
            else:
                continue
            if "not found" in line or path.startswith(str(root)):
                continue
            need[path.lstrip("/")] = Path(path)
    if missing:
        raise LabError(
            f"libraries missing on this host for {list(binaries)}: {sorted(set(missing))}",
            hint="apt-get install the packages that ship them",
        )
    return need


def debian_rootfs_tar(
    packages: Sequence[str], binaries: Sequence[str], files: Mapping[str, bytes] | None = None
) -> bytes:
    """A rootfs tar holding ``packages`` unpacked (no maintainer scripts), the shared
    libraries their ``binaries`` need copied from this host, and ``files``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="migrate-deb-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for pkg in packages:
            subprocess.run(
                ["dpkg-deb", "-x", str(find_deb(pkg)), str(root)],
                check=True,
                capture_output=True,
                timeout=BUILD_TIMEOUT_S,
            )
        for rel, host_file in _needed_libs(root, binaries).items():
            dest = root / rel
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(host_file.resolve().read_bytes())
                dest.chmod(0o755)
        for rel, data in (files or {}).items():
            dest = root / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root).as_posix()
                if rel.split("/")[0] in ("bin", "sbin", "lib", "lib64") and path.parent == root:
                    continue  # merged /usr: the base image's /bin and /sbin stay directories
                ti = tar.gettarinfo(str(path), arcname=rel)
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = IMAGE_MTIME, 0, 0, "root", "root"
                if ti.isreg():
                    with path.open("rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)
        return buf.getvalue()


def build_debian_app_image(
    docker_host: str,
    tag: str,
    packages: Sequence[str],
    binaries: Sequence[str],
    files: Mapping[str, bytes] | None = None,
    run: Sequence[str] = (),
    extra: Sequence[str] = (),
    base: str = BUSYBOX_TAG,
) -> ImageInfo:
    """An application image from Debian's packages, offline: busybox base + one layer with
    the unpacked packages and their libraries. The rootfs tar is cached by content of the
    request, and docker's build cache makes a rebuild of the same tar instant."""
    import hashlib

    key = hashlib.sha256(
        repr(
            (
                sorted(packages),
                list(binaries),
                sorted((k, hashlib.sha256(v).hexdigest()) for k, v in (files or {}).items()),
            )
        ).encode()
    ).hexdigest()
    cached = DEB_CACHE / "rootfs" / f"{key[:24]}.tar"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, debian_rootfs_tar(packages, binaries, files), durable=False)
    return build_image(
        docker_host,
        tag,
        base=base,
        files={},
        run=run,
        extra=extra,
        context_tars={"/": cached.read_bytes()},
    )
