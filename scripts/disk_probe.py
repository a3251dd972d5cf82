#!/usr/bin/env python3
"""Does reading one expert in pieces help on this disk? Random whole-expert O_DIRECT reads of
an expert store's experts.bin, each expert read as one request or as several pieces — either
concurrently (threads, one pread each: does queue depth shorten one read?) or one after
another (what chunked, preemptible prefetch reads would cost).

    scripts/disk_probe.py STORE/experts.bin EXPERT_BYTES [--reads 200] [--parallel 1,2,4,8] [--sequential-kib 960,256,128]

EXPERT_BYTES is one expert's stored size (`moe-serve inspect STORE` prints it; 983040 for the
widened demo's q4 experts). Medians of --reads reads per setting; the same random experts for
every setting. Note that a virtual disk may cache behind O_DIRECT on the host: repeat settings in
a different order before trusting a difference. Standard library only; Linux (O_DIRECT).
"""
import argparse
import mmap
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("expert_bytes", type=int)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--parallel", default="1,2,4,8", help="concurrent pieces per expert")
    parser.add_argument("--sequential-kib", default="", help="piece sizes read one after another")
    args = parser.parse_args()
    fd = os.open(args.path, os.O_RDONLY | os.O_DIRECT)
    length = args.expert_bytes // 4096 * 4096  # O_DIRECT: whole 4 KiB pages
    count = os.fstat(fd).st_size // args.expert_bytes
    buffers = [mmap.mmap(-1, length) for _ in range(16)]  # page-aligned, as O_DIRECT needs
    pool = ThreadPoolExecutor(16)

    def experts():
        rng = random.Random(1)
        return [rng.randrange(count) * args.expert_bytes // 4096 * 4096 for _ in range(args.reads)]

    def timed(read_one):
        times = []
        for base in experts():
            start = time.perf_counter()
            read_one(base)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for pieces in [int(p) for p in args.parallel.split(",") if p]:
        piece = length // pieces // 4096 * 4096

        def read_parallel(base, piece=piece, pieces=pieces):
            list(pool.map(lambda k: os.preadv(fd, [memoryview(buffers[k])[:piece]], base + k * piece), range(pieces)))
        median = timed(read_parallel)
        print(f"{pieces} concurrent piece(s) of {piece // 1024} KiB: median {median * 1e3:.2f} ms, {piece * pieces / median / 1e9:.2f} GB/s")
    for kib in [int(k) for k in args.sequential_kib.split(",") if k]:
        chunk = kib * 1024

        def read_sequential(base, chunk=chunk):
            offset = 0
            while offset < length:
                size = min(chunk, length - offset)
                os.preadv(fd, [memoryview(buffers[0])[offset:offset + size]], base + offset)
                offset += size
        median = timed(read_sequential)
        print(f"sequential pieces of {kib} KiB: median {median * 1e3:.2f} ms, {length / median / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
