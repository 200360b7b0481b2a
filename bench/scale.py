"""The production case of the seed patch at 1/16 scale.

The seed's process had VIRT 55 TiB, RES 590 GiB and VmPTE 110 GiB. At 1/16 that is
VIRT 3.4 TiB and RES 37 GiB. Here it is one 3.4 TiB arena, each of whose 1.78 million
2 MiB spans holds 5 or 6 resident pages. That is 9.7 million pages, and 1.78 million PTE
tables before anything is released.

The allocator then gives most of it back with MADV_DONTNEED:
* nine 1 GiB chunks in ten go back whole, one call each;
* in the rest, 1 MiB pieces at odd offsets go back, one call each. These never cover a
  whole span.

VmPTE is reported before and after, with or without PT reclaim.

    python bench/scale.py [--pt-reclaim | --no-pt-reclaim] [--fraction 16] [--json]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptreclaim import _core  # noqa: E402
from ptreclaim.constants import (  # noqa: E402
    MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, PMD_SIZE,
    PROT_READ, PROT_WRITE,
)

BASE = 0x2000_0000_0000
GIB = 1 << 30
PRODUCTION_VIRT = 55 << 40
PRODUCTION_RES = 590 * GIB


def run_scale(pt_reclaim=True, fraction=16, MM=_core.MM):
    virt = (PRODUCTION_VIRT // fraction) & ~(GIB - 1)
    res_pages = PRODUCTION_RES // fraction // 4096
    spans = virt // PMD_SIZE
    t0 = time.perf_counter()
    mm = MM(pt_reclaim=pt_reclaim)
    mm.mmap(BASE, virt, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
    # Spread res_pages over every span: span i gets base or base + 1 pages,
    # 64 KiB apart, so that every span has a PTE table.
    per_span = np.full(spans, res_pages // spans, dtype=np.int64)
    per_span[: res_pages % spans] += 1
    span_of = np.repeat(np.arange(spans, dtype=np.uint64), per_span)
    starts = np.concatenate(([0], np.cumsum(per_span)[:-1]))
    index_in_span = np.arange(res_pages, dtype=np.uint64) - np.repeat(starts, per_span).astype(np.uint64)
    addrs = BASE + span_of * np.uint64(PMD_SIZE) + index_in_span * np.uint64(64 << 10)
    for chunk in np.array_split(addrs, max(1, len(addrs) // (1 << 20))):
        mm.touch_pages(chunk, True)
    before = mm.status()
    tables_before = mm.stats["pte_tables_allocated"]
    # The allocator's release pattern.
    chunks = virt // GIB
    rng = np.random.default_rng(16)
    whole = rng.random(chunks) < 0.9
    for c in range(chunks):
        base = BASE + c * GIB
        if whole[c]:
            mm.madvise(base, GIB, MADV_DONTNEED)
        else:
            for off in range(3 << 19, GIB - (1 << 21), 8 << 20):
                mm.madvise(base + off, 1 << 20, MADV_DONTNEED)
    after = mm.status()
    seconds = time.perf_counter() - t0
    result = {
        "pt_reclaim": pt_reclaim,
        "fraction": fraction,
        "virt_kb": before["VmSize"],
        "rss_before_kb": before["VmRSS"],
        "rss_after_kb": after["VmRSS"],
        "vmpte_before_kb": before["VmPTE"],
        "vmpte_after_kb": after["VmPTE"],
        "pte_tables_before": tables_before,
        "pte_tables_reclaimed": mm.stats["pte_tables_freed_reclaim_fast"]
        + mm.stats["pte_tables_freed_reclaim_slow"],
        "seconds": seconds,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    mm.exit()
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pt-reclaim", dest="pt_reclaim", action="store_true", default=True)
    p.add_argument("--no-pt-reclaim", dest="pt_reclaim", action="store_false")
    p.add_argument("--fraction", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run_scale(args.pt_reclaim, args.fraction)
    if args.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:>22}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
