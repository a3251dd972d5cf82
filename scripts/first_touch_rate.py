#!/usr/bin/env python3
"""How fast this machine faults in fresh anonymous memory, one GiB at a time (docs/BENCHMARKS.md, "Session 33").

  scripts/first_touch_rate.py [GIB=4] [--huge]

Maps GIB GiB, optionally asks for 2 MiB pages (MADV_HUGEPAGE), and times MADV_POPULATE_WRITE (Linux 5.14) on each
GiB. On a virtual machine whose host backs guest memory on first touch, memory the guest has not touched, or freed
long enough ago for its balloon driver to hand back, faults in an order of magnitude slower than memory freed
seconds ago: run it twice in a row, then again after a minute's pause. Standard library only.
"""
import mmap
import sys
import time

MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23

gib = int(next((a for a in sys.argv[1:] if not a.startswith("--")), "4"))
huge = "--huge" in sys.argv
size = 1 << 30
region = mmap.mmap(-1, gib * size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if huge:
    region.madvise(MADV_HUGEPAGE)
rates = []
for i in range(gib):
    start = time.monotonic()
    region.madvise(MADV_POPULATE_WRITE, i * size, size)
    rates.append(size / (time.monotonic() - start) / 1e9)
print(f"{'2 MiB' if huge else '4 KiB'} pages, GB/s per GiB:", " ".join(f"{r:.2f}" for r in rates))
