"""`migrate import` and drills: a bundle file back to a running container.

Verify the whole bundle before creating anything, load the image if missing, create, apply
the layer, place the checkpoint and start from it. The destination's agent runs it for drills
(agent/drills.py) and the CLI for `migrate import`; the export is source/portable.py.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from migrate.checkpoint import criu, lazy_pages
from migrate.core.errors import BundleInvalid, MigrateError, NameConflict, RestoreFailed
from migrate.core.journal import DEFAULT_DIR
from migrate.engines.base import ContainerSpec, Engine, LazyRestore
from migrate.fs import bundle, extract
from migrate.fs.bundle import IMAGE_MEMBER, LOG_MEMBER, ROOTFS_MEMBER, VOLUME_PREFIX
from migrate.fs.files import read_chunks

RESTORE_WAIT_S = 60.0


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
        volumes = _bundle_volumes(manifest)
        _refuse_taken(engine, new_name, volumes, volume_names)
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
            checkpoint, restore_s, mode = _fill_and_restore(
                engine, cid, staging, volumes, filled, start
            )
        except BaseException:
            _undo(engine, cid, volumes, filled)
            raise
        return ImportResult(
            cid,
            new_name,
            start,
            restore_s,
            image_id,
            loaded,
            time.monotonic() - t_begin,
            checkpoint,
            tuple(filled),
            restore_mode=mode,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_taken(
    engine: Engine,
    new_name: str,
    volumes: list[dict[str, str]],
    volume_names: Mapping[str, str] | None,
) -> None:
    """Nothing of this host's is replaced: the container's name and each named volume the
    bundle fills must be free."""
    if engine.exists(new_name):
        raise NameConflict(
            f"a container named {new_name} already exists on this host",
            hint="choose another name with --name",
        )
    for v in volumes:
        vname = (volume_names or {}).get(v["name"], v["name"])
        if not engine.anonymous_volume(vname) and engine.volume_exists(vname):
            raise NameConflict(
                f"a volume named {vname} already exists on this host; the bundle "
                "carries its content and will not overwrite or merge into it",
                hint=f"remove it (`{engine.name} volume rm {vname}`) if it is not needed, or "
                "import on another host",
            )


def _fill_and_restore(
    engine: Engine,
    cid: str,
    staging: Path,
    volumes: list[dict[str, str]],
    filled: list[str],
    start: bool,
) -> tuple[str, float, str]:
    """The new container's layer, log, volumes and checkpoint from the staged bundle; then,
    with ``start``, its restore. Returns (the checkpoint left for a later start, or "";
    seconds the restore took; how it restored). ``filled`` collects the volumes written."""
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
        lazy_pages.split_for_restore(engine, full, target) if start else (None, "--no-start")
    )
    if split is None:
        shutil.move(str(full), str(target))
    if not start:
        return cp_name, 0.0, ""
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
    return "", restore_s, mode


def _undo(engine: Engine, cid: str, volumes: list[dict[str, str]], filled: list[str]) -> None:
    """A failed import leaves nothing: the container and the volumes it made go."""
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
                hint=f"remove it (`{engine.name} volume rm`) or import elsewhere",
            )
        filled.append(m.name)
        with open(staging / v["member"], "rb") as f:
            extract.apply(f, target, policy=extract.VOLUME_POLICY)
