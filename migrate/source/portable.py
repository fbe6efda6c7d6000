"""`migrate export` / `migrate import`: a running container to a bundle file and back.

Export: save the image (still running), pause, checkpoint with CRIU, capture the read-write
layer, then unpause (``--leave-running``) or kill the source, and write the bundle from the
staged files (migrate/fs/bundle.py). Import: verify the whole bundle before creating anything,
load the image if missing, create, apply the layer, place the checkpoint and start from it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from migrate import __version__
from migrate.checkpoint import criu, lazy_pages
from migrate.core.errors import (
    BundleInvalid,
    ContainerNotRunning,
    MigrateError,
    NameConflict,
    RestoreFailed,
    Unsupported,
)
from migrate.core.journal import DEFAULT_DIR
from migrate.engines.base import ContainerSpec, Engine, LazyRestore
from migrate.fs import bundle, capture, extract
from migrate.fs.files import read_chunks
from migrate.source.migration import check_process_owners

IMAGE_MEMBER = "image/docker-save.tar"
ROOTFS_MEMBER = "rootfs-diff.tar"
LOG_MEMBER = "container.log"
VOLUME_PREFIX = "volumes/"
CHECKPOINT_PREFIX = "checkpoint/"
RESTORE_WAIT_S = 60.0


@dataclass(frozen=True)
class ExportResult:
    manifest: bundle.Manifest
    path: Path
    bundle_bytes: int
    pause_s: float
    checkpoint_time: str
    source_action: str  # "running" or "stopped"


@dataclass(frozen=True)
class ImportResult:
    container_id: str
    name: str
    started: bool
    restore_s: float  # CRIU restore: from `start --checkpoint` to running
    image_id: str = ""
    image_loaded: bool = False  # the image was missing here and came from the bundle
    total_s: float = 0.0  # from the bundle on disk to the container running (recovery time)
    checkpoint: str = ""  # with start=False: `docker start --checkpoint CHECKPOINT NAME`
    volumes: tuple[str, ...] = ()  # the volumes this import created and filled
    # lazy_local: memory fed by a local lazy-pages daemon; plain (why): all through Docker
    restore_mode: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def export(
    engine: Engine,
    container: str,
    out: Path,
    *,
    leave_running: bool = False,
    state_dir: Path = DEFAULT_DIR,
) -> ExportResult:
    st = engine.state(container)
    if not st.running or st.paused:
        raise ContainerNotRunning(
            f"container {st.name} is {st.status}: only running containers are exported",
            hint=f"start it (`docker start {st.name}`) or unpause it first",
        )
    spec = engine.spec(container)
    execs = engine.exec_sessions(spec.id)
    if execs:
        raise Unsupported(
            f"`docker exec` sessions are running in {spec.name}: {'; '.join(execs)}",
            hint="CRIU cannot dump processes outside the container's process tree: "
            "end those exec sessions and retry",
        )
    check_process_owners(engine, spec)
    img = engine.image(spec.image_id)
    if img is None:
        raise MigrateError(f"the image of {spec.name} ({spec.image_id[:19]}) is gone")
    staging = state_dir / "staging" / f"export-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    paused = False
    try:
        refs = [spec.image_ref] if spec.image_ref in img.repo_tags else []
        refs = refs or list(img.repo_tags[:1]) or [img.id]
        with open(staging / "image.tar", "wb") as f:
            for chunk in engine.save_image(refs):
                f.write(chunk)
        log_src = engine.log_file(spec.id)
        log_copy = staging / LOG_MEMBER
        # Most of the log is copied while the container runs, the rest while it is paused.
        log_at = _copy_log(log_src, log_copy, 0) if log_src is not None else None
        t_pause = time.monotonic()
        engine.pause(spec.id)
        paused = True
        checkpoint_time = _now()
        engine.checkpoint(spec.id, staging / "checkpoint", staging / "work")
        with open(staging / ROOTFS_MEMBER, "wb") as f:
            capture.capture_to(Path(engine.state(spec.id).upper_dir), f)
        if log_src is not None and log_at is not None:
            _copy_log(log_src, log_copy, log_at)
        volumes = _capture_volumes(spec, staging / "volumes")  # frozen: consistent with memory
        if leave_running:
            engine.unpause(spec.id)
            action = "running"
        else:
            engine.kill(spec.id)
            action = "stopped"
        paused = False
        pause_s = time.monotonic() - t_pause
        files = [(IMAGE_MEMBER, staging / "image.tar"), (ROOTFS_MEMBER, staging / ROOTFS_MEMBER)]
        if log_copy.is_file():
            files.append((LOG_MEMBER, log_copy))
        for v in volumes:
            files.append((v["member"], staging / v["member"]))
        for p in sorted((staging / "checkpoint").iterdir()):
            if not p.is_file() or p.is_symlink():
                raise MigrateError(f"unexpected non-file {p.name} in the CRIU images")
            files.append((CHECKPOINT_PREFIX + p.name, p))
        info = engine.info()
        caps = criu.capabilities(criu.find_criu())
        meta = {
            "container": spec.name,
            "spec": spec.to_wire(),
            "image": {"id": img.id, "ref": spec.image_ref, "diff_ids": list(img.diff_ids)},
            "engine": {"name": info.engine, "version": info.version},
            "criu_version": ".".join(map(str, caps.version)) if caps.version else None,
            "migrate_version": __version__,
            "source_host": socket.gethostname(),
            "created": checkpoint_time,
            "checkpoint": "checkpoint",
            "volumes": volumes,
        }
        manifest = bundle.write_file(out, files, meta)
        return ExportResult(manifest, out, out.stat().st_size, pause_s, checkpoint_time, action)
    finally:
        if paused:
            try:
                engine.unpause(spec.id)
            except MigrateError:
                pass
        shutil.rmtree(staging, ignore_errors=True)


def import_bundle(
    engine: Engine,
    path: Path,
    *,
    name: str | None = None,
    start: bool = True,
    state_dir: Path = DEFAULT_DIR,
    isolated: bool = False,
    labels: Mapping[str, str] | None = None,
    volume_names: Mapping[str, str] | None = None,
) -> ImportResult:
    """Verify, then recreate and restore. ``isolated``, ``labels`` and ``volume_names`` go to
    ``Engine.create`` (drills restore with no network, no published ports, no restart policy,
    and volumes of their own)."""
    t_begin = time.monotonic()
    staging = state_dir / "staging" / f"import-{uuid.uuid4().hex}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    manifest = bundle.extract(path, staging)  # everything verified before anything is made
    try:
        try:
            spec = ContainerSpec.from_wire(manifest.meta["spec"])
            image_id = str(manifest.meta["image"]["id"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleInvalid(f"bundle member 'manifest.json': bad metadata ({e})") from None
        new_name = name or spec.name
        if engine.exists(new_name):
            raise NameConflict(
                f"a container named {new_name} already exists on this host",
                hint="choose another name with --name",
            )
        volumes = _bundle_volumes(manifest)
        for v in volumes:
            vname = (volume_names or {}).get(v["name"], v["name"])
            if not _anonymous(vname) and engine.volume_exists(vname):
                raise NameConflict(
                    f"a volume named {vname} already exists on this host; the bundle "
                    "carries its content and will not overwrite or merge into it",
                    hint=f"remove it (`docker volume rm {vname}`) if it is not needed, or "
                    "import on another host",
                )
        loaded = engine.image(image_id) is None
        if loaded:
            engine.load_image(read_chunks(staging / IMAGE_MEMBER))
        img = engine.image(spec.image_ref) if spec.image_ref else None
        image = spec.image_ref if img is not None and img.id == image_id else image_id
        cid = engine.create(
            spec, new_name, image=image, isolated=isolated, labels=labels, volume_names=volume_names
        )
        filled: list[str] = []  # volumes this import wrote into (new and empty before)
        try:
            upper = Path(engine.state(cid).upper_dir)
            with open(staging / ROOTFS_MEMBER, "rb") as f:
                extract.apply(f, upper, policy=extract.ROOTFS_POLICY)
            _place_log(engine, cid, staging / LOG_MEMBER)
            _fill_volumes(engine, cid, staging, volumes, filled)
            cp_name = f"bundle-{uuid.uuid4().hex[:12]}"
            target = engine.checkpoint_dir(cid, cp_name)
            target.parent.mkdir(parents=True, exist_ok=True)
            full = staging / "checkpoint"
            # Started here: Docker gets the images without the lazy memory and a local
            # lazy-pages daemon feeds it from the staged ones (lazy_pages.py; Docker's own
            # path streams every byte through containerd: ~30 s for 1 GiB).
            split, why = (
                lazy_pages.split_for_restore(engine, full, target)
                if start
                else (None, "--no-start")
            )
            if split is None:
                shutil.move(str(full), str(target))
            if not start:
                return ImportResult(
                    cid,
                    new_name,
                    False,
                    0.0,
                    image_id,
                    loaded,
                    time.monotonic() - t_begin,
                    cp_name,
                    tuple(filled),
                )
            t0 = time.monotonic()
            if split is None:
                engine.start_from_checkpoint(cid, cp_name)
                _wait_running(engine, cid)
                mode = f"plain ({why})"
            else:
                _start_split(engine, cid, cp_name, full, cp_name)
                mode = "lazy_local"
            restore_s = time.monotonic() - t0
            shutil.rmtree(target, ignore_errors=True)
            return ImportResult(
                cid,
                new_name,
                True,
                restore_s,
                image_id,
                loaded,
                time.monotonic() - t_begin,
                "",
                tuple(filled),
                restore_mode=mode,
            )
        except BaseException:
            made: list[str] = []
            try:
                made = _volumes_of(engine, cid, volumes, filled)
            except MigrateError:
                pass
            try:
                engine.remove(cid)
                for name in made:
                    engine.remove_volume(name)
            except MigrateError:
                pass
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _wait_running(engine: Engine, cid: str) -> None:
    deadline = time.monotonic() + RESTORE_WAIT_S
    while True:
        st = engine.state(cid)
        if st.running and not st.paused:
            return
        if st.status in ("exited", "dead") or time.monotonic() > deadline:
            raise RestoreFailed(f"the restored container is {st.status}, not running")
        time.sleep(0.02)


def _start_split(engine: Engine, cid: str, cp_name: str, full: Path, tag: str) -> None:
    """Start from the split checkpoint with a local lazy-pages daemon serving ``full``; back
    only when every page is in (the staged images are deleted after that)."""
    criu_bin = criu.find_criu()
    assert criu_bin is not None  # lazy_pages.blocker checked it
    work = lazy_pages.WORK_ROOT / f"import-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    daemon = lazy_pages.LazyPagesDaemon(criu_bin, full, work)
    try:
        engine.start_from_checkpoint(cid, cp_name, lazy=LazyRestore(work_dir=work))
        _wait_running(engine, cid)
        daemon.wait(lazy_pages.FILL_TIMEOUT_S)
        _wait_running(engine, cid)
    finally:
        daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


def _copy_log(src: Path, dst: Path, offset: int) -> int | None:
    """Append ``src`` from ``offset`` to ``dst``; the new offset. A log that shrank (rotated)
    is copied again from its start. None if it cannot be read (the bundle goes without it)."""
    try:
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
                dst.unlink(missing_ok=True)
            f.seek(offset)
            with open(dst, "ab") as out:
                while offset < size and (b := f.read(min(1 << 20, size - offset))):
                    out.write(b)
                    offset += len(b)
        return offset
    except FileNotFoundError:
        return 0
    except OSError:
        dst.unlink(missing_ok=True)
        return None


def _place_log(engine: Engine, cid: str, log: Path) -> None:
    """Put the source's log where the new container's log driver will append to it, so
    `docker logs` shows the history too. Skipped if the driver keeps no such file."""
    if not log.is_file():
        return
    target = engine.log_file(cid)
    if target is None or (target.exists() and target.stat().st_size > 0):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, target)


def _anonymous(name: str) -> bool:
    """Docker names anonymous volumes with 64 hex digits; the create makes a new one."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _capture_volumes(spec: ContainerSpec, into: Path) -> list[dict[str, str]]:
    """Each volume mount's content as ``volumes/<name>.tar`` (migrate.fs.capture format)."""
    out = []
    for m in spec.mounts:
        if m.type != "volume" or not m.name:
            continue
        member = f"{VOLUME_PREFIX}{m.name}.tar"
        bundle.check_name(member)
        into.mkdir(exist_ok=True)
        with open(into / f"{m.name}.tar", "wb") as f:
            capture.capture_to(Path(m.source), f)
        out.append({"name": m.name, "destination": m.destination, "member": member})
    return out


def _bundle_volumes(manifest: bundle.Manifest) -> list[dict[str, str]]:
    """The volumes the manifest declares, each backed by a member (checked, not trusted)."""
    raw = manifest.meta.get("volumes") or []
    names = {m.name for m in manifest.members}
    out = []
    if not isinstance(raw, list):
        raise BundleInvalid("bundle member 'manifest.json': bad volume list")
    for v in raw:
        if not isinstance(v, dict) or not all(
            isinstance(v.get(k), str) for k in ("name", "destination", "member")
        ):
            raise BundleInvalid("bundle member 'manifest.json': bad volume entry")
        if v["member"] != f"{VOLUME_PREFIX}{v['name']}.tar" or v["member"] not in names:
            raise BundleInvalid(
                f"bundle member {v['member']!r}: volume without its content",
                details={"member": v["member"]},
            )
        out.append({k: v[k] for k in ("name", "destination", "member")})
    return out


def _volumes_of(
    engine: Engine, cid: str, volumes: list[dict[str, str]], filled: list[str]
) -> list[str]:
    """The volumes a failed import made and must remove: those it filled, and those at the
    bundle's destinations that are still empty (the create made them; nothing else uses them).
    A volume that had content before is never among them."""
    want = {v["destination"] for v in volumes}
    out = []
    for m in engine.spec(cid).mounts:
        if m.type != "volume" or not m.name or m.destination not in want:
            continue
        src = Path(m.source) if m.source else None
        if m.name in filled or (src is not None and src.is_dir() and not any(src.iterdir())):
            out.append(m.name)
    return out


def _fill_volumes(
    engine: Engine, cid: str, staging: Path, volumes: list[dict[str, str]], filled: list[str]
) -> None:
    """Write each carried volume into the (new, empty) volume the create made for it."""
    if not volumes:
        return
    mounts = {m.destination: m for m in engine.spec(cid).mounts if m.type == "volume"}
    for v in volumes:
        m = mounts.get(v["destination"])
        if m is None or not m.source:
            raise RestoreFailed(f"the new container has no volume at {v['destination']}")
        target = Path(m.source)
        if any(target.iterdir()):
            raise NameConflict(
                f"volume {m.name} on this host is not empty",
                hint="remove it (`docker volume rm`) or import elsewhere",
            )
        filled.append(m.name)
        with open(staging / v["member"], "rb") as f:
            extract.apply(f, target, policy=extract.VOLUME_POLICY)
