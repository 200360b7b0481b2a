"""`ptreclaim demo`: the seed patch's headline experiment, simulated.

mmap 50 GiB of private anonymous memory, then 25,600 times: write every page
of the next 2 MiB and madvise() that 2 MiB away. With PT reclaim each
MADV_DONTNEED frees the PTE table it emptied; without it, or with MADV_FREE,
every table stays.
"""

import sys
import time

from ptreclaim.constants import (
    MADV_DONTNEED, MADV_FREE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE,
    MAP_PRIVATE, PMD_SIZE, PROT_READ, PROT_WRITE,
)

# 32 TiB: 1 GiB- and 512 GiB-aligned, in a 512 GiB slot of its own, the base
# used for every measurement on the real kernel.
BASE = 0x2000_0000_0000


def seed_experiment(mm_factory, *, size=50 << 30, iterations=None, advice=MADV_DONTNEED,
                    progress=None):
    """Run the seed loop on a fresh MM; return (status before, status after, seconds)."""
    if iterations is None:
        iterations = size // PMD_SIZE
    if iterations * PMD_SIZE > size:
        raise ValueError("iterations x 2 MiB does not fit in size")
    mm = mm_factory()
    addr = mm.mmap(BASE, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
    before = mm.status()
    touch, madvise = mm.touch, mm.madvise
    step = max(1, iterations // 100)
    t0 = time.perf_counter()
    for i in range(iterations):
        p = addr + i * PMD_SIZE
        touch(p, PMD_SIZE)
        madvise(p, PMD_SIZE, advice)
        if progress is not None and (i % step == 0 or i == iterations - 1):
            progress(i + 1, iterations)
    seconds = time.perf_counter() - t0
    after = mm.status()
    mm.exit()
    return before, after, seconds


def _human_kb(kb):
    for unit, div in (("GB", 1 << 20), ("MB", 1 << 10)):
        if kb >= div:
            return f"{kb / div:.1f} {unit}"
    return f"{kb} kB"


class _Bar:
    def __init__(self, label, stream):
        self.label, self.stream = label, stream

    def __call__(self, done, total):
        width = 30
        filled = width * done // total
        self.stream.write(f"\r  {self.label:<26} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done:>6}/{total}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="run the seed experiment with and without PT reclaim")
    p.add_argument("--size", default="50G", help="mapping size (default 50G; K, M, G suffixes)")
    p.add_argument("--iterations", type=int, default=None,
                   help="2 MiB steps to run (default: the whole mapping)")
    p.add_argument("--thp", choices=("never", "madvise", "always"), default=None,
                   help="also run with this transparent_hugepage/enabled mode, beside the "
                        "default (madvise, where the seed's mapping gets no THP)")
    p.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    p.set_defaults(func=run)
    return p


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1], 0) * units[text[-1]]
    return int(text, 0)


def run(args, out=sys.stdout, err=sys.stderr):
    import ptreclaim

    size = parse_size(args.size)
    if size <= 0 or size % PMD_SIZE:
        err.write("ptreclaim demo: --size must be a positive multiple of 2M\n")
        return 2
    variants = [
        ("without PT reclaim", dict(pt_reclaim=False), MADV_DONTNEED),
        ("with PT reclaim", dict(pt_reclaim=True), MADV_DONTNEED),
        ("MADV_FREE", dict(pt_reclaim=True), MADV_FREE),
    ]
    modes = ["madvise"]
    if args.thp is not None and args.thp != "madvise":
        modes.append(args.thp)
    n = args.iterations if args.iterations is not None else size // PMD_SIZE
    out.write(f"\nmmap {_human_kb(size // 1024)}; {n} x {{ touch 2M; madvise 2M }}"
              f"  [{ptreclaim.IMPLEMENTATION}]\n")
    for mode in modes:
        results = []
        for label, kwargs, advice in variants:
            bar = None if args.no_progress else _Bar(f"{label}, THP {mode}", err)
            results.append(seed_experiment(lambda: ptreclaim.MM(thp=mode, **kwargs), size=size,
                                           iterations=args.iterations, advice=advice,
                                           progress=bar))
        out.write(f"\nTHP {mode}\n")
        heads = [label for label, _, _ in variants]
        out.write(f"{'':8}" + "".join(f"{h:>22}" for h in heads) + "\n")
        rows = [("VIRT", "VmSize", _human_kb), ("RES", "VmRSS", _human_kb),
                ("VmPTE", "VmPTE", lambda kb: f"{kb} kB")]
        for name, field, fmt in rows:
            out.write(f"{name:8}" + "".join(f"{fmt(after[field]):>22}" for _, after, _ in results)
                      + "\n")
        out.write(f"{'time':8}" + "".join(f"{s:>20.2f} s" for _, _, s in results) + "\n")
        out.write(f"{'per step':8}"
                  + "".join(f"{s / max(n, 1) * 1e6:>19.2f} us" for _, _, s in results) + "\n")
    return 0
