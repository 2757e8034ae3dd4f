"""A dataset's world, kept on local disk: built once, then mapped by every transaction writer.

Building the world (:func:`flows.fraud_synth.world.build_world`) costs about 0.4 CPU-s for a
million customers, and each writer is a fresh guarded child: 79 files of a 10 GB dataset paid
it 79 times. The first writer of a dataset saves the arrays as ``.npy`` files in
``<state dir>/fraud_synth/worlds/<fingerprint>/`` (written under a temporary name, renamed
into place); the others map them read-only, so the page cache holds one copy for all writers.
The world is a function of the spec alone: a cache that is missing, partial or unreadable is
rebuilt, and the rows written are the same either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from flows.fraud_synth.spec import DatasetSpec
from flows.fraud_synth.world import Windows, World, build_world
from headroom.storage import publishing

log = logging.getLogger(__name__)

KEEP_WORLDS = 4
"""Worlds kept (the most recently used); older ones are removed when a new one is saved."""
FORMAT = 1
META = "world.json"


def worlds_dir() -> Path:
    from headroom.state import state_dir

    return state_dir() / "fraud_synth" / "worlds"


def cached_world(spec: DatasetSpec, key: str, root: Path | None = None) -> World:
    """The world of ``spec`` (``key``: its fingerprint), from the cache when it is there."""
    root = worlds_dir() if root is None else root
    folder = root / key
    try:
        world = _load(folder, spec)
        os.utime(folder)  # most recently used
        return world
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("world cache %s unreadable (%s): rebuilt", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)  # writers that mapped it keep their copy
    world = build_world(spec)
    try:
        _save(world, root, key)
    except OSError as exc:  # a full or read-only disk costs the rebuild next time, no more
        log.warning("world cache %s not saved: %s", folder, exc)
    return world


def _save(world: World, root: Path, key: str) -> None:
    # Another writer may save the same world first: theirs is kept (it is the same world).
    with publishing(root / key, directory=True, replace=False) as temporary:
        meta: dict = {"format": FORMAT, "spec": world.spec.to_dict(), "values": {}}
        for item in fields(World):
            value = getattr(world, item.name)
            if isinstance(value, np.ndarray):
                np.save(temporary / f"{item.name}.npy", value, allow_pickle=False)
            elif isinstance(value, Windows):
                meta["values"][item.name] = {"windows": vars(value)}
            elif item.name != "spec":
                meta["values"][item.name] = value
        (temporary / META).write_text(json.dumps(meta))
    _evict(root, keep=key)


def _load(folder: Path, spec: DatasetSpec) -> World:
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT or meta.get("spec") != spec.to_dict():
        raise ValueError("saved for another spec or format")
    values: dict = {"spec": spec}
    for item in fields(World):
        if item.name == "spec":
            continue
        saved = meta["values"].get(item.name)
        if saved is None:
            values[item.name] = np.load(folder / f"{item.name}.npy", mmap_mode="r")
        elif isinstance(saved, dict) and "windows" in saved:
            values[item.name] = Windows(**saved["windows"])
        else:
            values[item.name] = saved
    return World(**values)


def _evict(root: Path, keep: str) -> None:
    """Keep the ``KEEP_WORLDS`` most recently used worlds; remove temporaries an hour old."""
    now = time.time()
    worlds = []
    for path in root.iterdir():
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if path.name.startswith(".tmp-"):
            if age > 3600:
                shutil.rmtree(path, ignore_errors=True)
        elif path.name != keep:
            worlds.append((age, path))
    for _, path in sorted(worlds)[KEEP_WORLDS - 1 :]:
        shutil.rmtree(path, ignore_errors=True)
