"""``--cache auto``: where training keeps its decoded images, decided from their size before any decode.

The decoded size is estimated as images x height x width x 3 bytes (uint8, train + val). It is kept in
memory when that fits :data:`MEMORY_SHARE` of the available RAM, else in a file cache in the run directory
when the disk there has room for it (with :data:`DISK_SPARE` left), else not at all (each epoch decodes
again). The finetune header prints the choice and why.

Example:
    >>> choice = resolve_cache("auto", 3_000, (224, 224), Path("runs/x/cache"))
    >>> choice.value, choice.line      # ('memory', 'memory: 0.45 GB of decoded images fit ...')
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Share of the available memory a memory cache may take.
MEMORY_SHARE = 0.25
#: Bytes a file cache leaves free on its disk.
DISK_SPARE = 2 << 30


@dataclass(frozen=True)
class CacheChoice:
    """What ``make_dataset`` gets (``memory``, ``none`` or a file prefix) and the header line's text."""

    value: str
    line: str
    scratch: Path | None = None  # the folder of an automatic file cache, removed after training


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def cgroup_limit() -> int | None:
    """The container's memory left under its cgroup (v2) limit, or None when there is none."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_memory() -> int:
    """Bytes of memory available to this process now (``MemAvailable``, capped by a cgroup limit)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if avail is None:  # not Linux: free physical pages
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = cgroup_limit()
    return avail if limit is None else min(avail, limit)


def decoded_bytes(n_images: int, size: tuple[int, int] | list[int]) -> int:
    """The uint8 size of ``n_images`` decoded at ``size`` (height, width)."""
    return int(n_images) * int(size[0]) * int(size[1]) * 3


def resolve_cache(choice: str, n_images: int, size: tuple[int, int] | list[int], cache_dir: Path,
                  memory: int | None = None) -> CacheChoice:
    """The cache for ``n_images`` (train + val) at ``size``: ``choice`` as given unless it is ``auto``."""
    if choice != "auto":
        where = {"memory": "memory", "none": "none (each epoch decodes again)"}.get(choice, f"file {choice}-*")
        return CacheChoice(choice, f"{where} (--cache {choice})")
    need = decoded_bytes(n_images, size)
    memory = available_memory() if memory is None else memory
    budget = int(memory * MEMORY_SHARE)
    fits = f"{gb(need)} of decoded images"
    of = f"a quarter of the {gb(memory)} of memory available"
    if need <= budget:
        return CacheChoice("memory", f"memory: {fits} fit {gb(budget)} ({of})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if need + DISK_SPARE <= free:
        return CacheChoice(str(cache_dir / "images"),
                           f"file in {cache_dir}: {fits} exceed {gb(budget)} ({of}); removed after training",
                           cache_dir)
    return CacheChoice("none", f"none: {fits} exceed {gb(budget)} ({of}) and the {gb(free)} free on disk; "
                       "each epoch decodes again (--cache PATH puts a file cache elsewhere)")
