"""Where a worker's resident memory is (benchmarks only).

``smaps_breakdown`` reads ``/proc/<pid>/smaps`` from outside and sums the
resident KiB per mapping kind; ``write_report`` runs inside a worker (see
``gunicorn_diag.conf.py``) and reports what its allocators think they hold.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

KIB = 1024
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def _kind(size_kib: int, path: str) -> str:
    if path == "[heap]":
        return "heap"
    if path.startswith("["):
        return path.strip("[]")
    if path:
        return "file"
    if size_kib == 16:
        return "anon 16K"
    if size_kib == 1024:
        return "anon 1M"
    if size_kib < 1024:
        return "anon <1M other"
    return "anon >1M"


def smaps_breakdown(pid: int) -> dict[str, dict[str, int]]:
    """``{kind: {"rss": KiB, "size": KiB, "count": n}}`` for one process.

    The kernel merges adjacent anonymous mappings, so pymalloc's 1 MiB
    arenas and the 16 KiB frame-stack chunks of greenlets mostly end up in
    "anon >1M"; the allocator report tells them apart.
    """
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"rss": 0, "size": 0, "count": 0})
    kind = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = _HEADER.match(line)
        if header:
            start, end, _perms, path = header.groups()
            size_kib = (int(end, 16) - int(start, 16)) // KIB
            kind = _kind(size_kib, path.strip())
            totals[kind]["size"] += size_kib
            totals[kind]["count"] += 1
        elif line.startswith("Rss:") and kind is not None:
            totals[kind]["rss"] += int(line.split()[1])
    return dict(totals)


# ---- inside the worker


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]


def _mallinfo2() -> dict[str, int]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {name: getattr(info, name) // KIB for name, _ in _MallInfo2._fields_}


def _pymalloc_stats() -> dict[str, int]:
    """The numbers of ``sys._debugmallocstats()`` (it prints to the C stderr)."""
    libc = ctypes.CDLL("libc.so.6")
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        libc.fflush(None)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
            libc.fflush(None)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode()
    stats = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        name, value = line.rsplit("=", 1)
        value = value.strip().replace(",", "")
        if value.isdigit():
            stats[" ".join(name.split())] = int(value)
    return stats


def write_report(directory: str) -> None:
    import greenlet

    objects = gc.get_objects()
    greenlets = [o for o in objects if isinstance(o, greenlet.greenlet)]
    pymalloc = _pymalloc_stats()
    census: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for obj in objects:
        entry = census[f"{type(obj).__module__}.{type(obj).__qualname__}"]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    report = {
        "pid": os.getpid(),
        "mallinfo2_kib": _mallinfo2(),
        "pymalloc": {k: v for k, v in pymalloc.items() if k.startswith(("#", "Total")) or "unused pools" in k},
        "greenlets": len(greenlets),
        "greenlet_stack_saved_kib": sum(g._stack_saved for g in greenlets) / KIB,
        "threads": threading.active_count(),
        "gc_objects": len(objects),
        # Objects gc tracks (not str, bytes, int, float), by type: [count, bytes of the object itself].
        "types": dict(census),
    }
    del objects
    import tracemalloc

    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(Path(directory) / f"{os.getpid()}-{report['greenlets']}.tracemalloc"))
    path = Path(directory) / f"{os.getpid()}.json"
    path.write_text(json.dumps(report, indent=1))


# ---- glibc heap residency (needs read access to /proc/<pid>/mem)

PAGE = 4096


def _heap_range(pid: int) -> tuple[int, int]:
    """The heap can be several adjacent mappings (the part inherited through fork is one)."""
    ranges = [
        [int(part, 16) for part in line.split()[0].split("-")]
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if line.endswith("[heap]")
    ]
    return ranges[0][0], ranges[-1][1]


def _present_pages(pid: int, start: int, end: int) -> list[bool]:
    import struct

    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        raw = pagemap.read((end - start) // PAGE * 8)
    return [bool(entry >> 63) for entry in struct.unpack(f"{len(raw) // 8}Q", raw)]


def heap_residency(pid: int, samples: int = 0) -> dict:
    """Walk the main arena's chunks; per chunk size, how many pages are not resident.

    Returns ``{"chunks": {size: [count, in_use, absent_pages]}, "samples": [...]}``;
    sizes are rounded to 256 bytes. A chunk is in use when the next chunk's
    PREV_INUSE bit is set (fastbin and tcache chunks also look in use).
    """
    import struct

    start, end = _heap_range(pid)
    present = _present_pages(pid, start, end)
    chunks: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    examples: list[tuple[int, int, bytes]] = []
    with open(f"/proc/{pid}/mem", "rb") as mem:
        address = start
        headers = []
        while address + 16 <= end:
            if not present[(address + 8 - start) // PAGE]:
                break
            mem.seek(address + 8)
            size = struct.unpack("Q", mem.read(8))[0] & ~7
            if size < 16 or address + size > end:
                break
            headers.append((address, size))
            address += size
        for index, (address, size) in enumerate(headers):
            in_use = True
            if index + 1 < len(headers):
                nxt = headers[index + 1][0]
                mem.seek(nxt + 8)
                in_use = bool(struct.unpack("Q", mem.read(8))[0] & 1)
            first, last = (address + 16 + PAGE - 1) // PAGE, (address + size) // PAGE
            absent = sum(1 for page in range(first, last) if not present[page - start // PAGE])
            bucket = chunks[(size + 255) // 256 * 256]
            bucket[0] += 1
            bucket[1] += in_use
            bucket[2] += absent
            if absent and len(examples) < samples and in_use:
                mem.seek(address + 16)
                examples.append((address, size, mem.read(min(96, PAGE - (address + 16) % PAGE))))
    return {"chunks": dict(chunks), "samples": examples, "walked_to": address - start, "heap": end - start}
