"""One run, every reference point: the seed loop per iteration on the host kernel, in
ptreclaim (per-call API), in the reference model and in bench/limit.c (the least work
any simulator must do); the bulk API per access against limit.c's bulk bound; host
memory per simulated table and page; and the 1/16-production scale scenario.

    python bench/compare.py                    # everything, default sizes
    python bench/compare.py --only seed,bulk   # some sections
    python bench/compare.py --iterations 25600 # the seed loop at full size on the kernel too

Ratios are of figures measured in this run. Nothing here is a timing gate.
"""

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ptreclaim import _core, _reference  # noqa: E402
from ptreclaim.constants import (  # noqa: E402
    MADV_DONTNEED, MADV_FREE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE,
    PMD_SIZE, PROT_READ, PROT_WRITE,
)
from ptreclaim.demo import BASE, seed_experiment  # noqa: E402

ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
RW = PROT_READ | PROT_WRITE
GIB = 1 << 30


def build(name, workdir):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("compare.py needs a C compiler for bench/*.c")
    out = Path(workdir) / name
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / f"{name}.c")], check=True)
    return out


def best_of(fn, rounds):
    best = None
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def section_seed(args, workdir, out):
    rows = {}
    if sys.platform.startswith("linux"):
        binary = build("seed_loop", workdir)
        n = args.iterations
        res = subprocess.run([str(binary), str(n)], check=True, capture_output=True, text=True)
        it, ns, dvmpte = (int(x) for x in res.stdout.split())
        rows["host kernel"] = ns / it
        out["kernel_seed_iterations"] = it
        out["kernel_seed_dvmpte_kb"] = dvmpte
    full = 25600
    # The best of several full runs: on a shared machine a neighbour's burst
    # can slow one 0.1 s run by 2x, and the minimum is what the code costs.
    rows["ptreclaim (core, per call)"] = best_of(
        lambda: seed_experiment(_core.MM, iterations=full), args.rounds) / full * 1e9
    ref_n = 512
    rows["reference model"] = best_of(
        lambda: seed_experiment(_reference.MM, iterations=ref_n), 1) / ref_n * 1e9
    limit = build("limit", workdir)
    res = subprocess.run([str(limit), str(full)], check=True, capture_output=True, text=True)
    rows["limit.c (lower bound)"] = float(res.stdout.split()[1])
    core = rows["ptreclaim (core, per call)"]
    print("\nseed loop, per iteration (touch 2 MiB + MADV_DONTNEED 2 MiB)")
    for name, ns in rows.items():
        print(f"  {name:<30} {ns / 1000:>12.2f} us   {ns / core:>9.2f} x core")
    if "host kernel" in rows:
        print(f"  kernel / core = {rows['host kernel'] / core:.0f}x;  core / limit.c = "
              f"{core / rows['limit.c (lower bound)']:.2f}x;  reference / core = "
              f"{rows['reference model'] / core:.0f}x")
    out["seed_ns_per_iteration"] = rows


def section_bulk(args, workdir, out):
    n = args.bulk
    x = 42
    addrs = np.empty(n, dtype=np.uint64)
    # The same xorshift sequence as limit.c's bulk bound, over 4 GiB.
    mask = (1 << 64) - 1
    for i in range(n):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        addrs[i] = BASE + x % (4 * GIB)

    def run():
        mm = _core.MM()
        mm.mmap(BASE, 4 * GIB, RW, ANON)
        t0 = time.perf_counter()
        mm.touch_pages(addrs, True)
        return time.perf_counter() - t0

    core_ns = min(run() for _ in range(3)) / n * 1e9
    limit = build("limit", workdir)
    res = subprocess.run([str(limit), "bulk", str(n)], check=True, capture_output=True, text=True)
    bound = float(res.stdout.split()[1])
    print(f"\nbulk API, per access ({n:,} random writes in 4 GiB)")
    print(f"  {'ptreclaim touch_pages()':<30} {core_ns:>9.1f} ns")
    print(f"  {'limit.c bulk bound':<30} {bound:>9.1f} ns   core / bound = {core_ns / bound:.2f}x")
    out["bulk_ns_per_access"] = {"core": core_ns, "limit.c": bound}


_MEMORY_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from ptreclaim import _core
from ptreclaim.constants import MADV_FREE
from ptreclaim.demo import seed_experiment
m = _core.Machine()
t0 = time.perf_counter()
before, after, _ = seed_experiment(lambda: _core.MM(machine=m), advice=MADV_FREE)
print(after["RssAnon"] // 4, after["VmPTE"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      time.perf_counter() - t0)
"""


def section_memory(args, workdir, out):
    # The pool's and the frame array's own accounting.
    m = _core.Machine()
    mm = _core.MM(machine=m)
    mm.mmap(BASE, 64 * GIB, RW, ANON)
    tracemalloc.start()
    for i in range(4096):
        mm.touch(BASE + i * PMD_SIZE, 4096)
    py_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tables = m.tables_in_use
    pages = m.frames_in_use
    per_table = (4096 + 1 + 1 + 4)       # the table, its state and level bytes, its free-stack slot
    per_page = 16                         # struct pt_page
    print("\nhost memory")
    print(f"  per simulated table:           {per_table} bytes ({per_table / 1024:.2f} KiB)")
    print(f"  per resident simulated page:   {per_page} bytes beyond its 8-byte entry")
    print(f"  Python heap while faulting 4,096 spans: {py_bytes:,} bytes peak (tracemalloc)")
    print(f"  check: {tables} tables and {pages} pages in use, host_bytes {m.host_bytes:,}")
    mm.exit()
    res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(HERE.parent)], check=True,
                         capture_output=True, text=True)
    resident, vmpte, maxrss_kb, seconds = res.stdout.split()
    print(f"  full seed experiment with MADV_FREE: {int(resident):,} resident pages, VmPTE "
          f"{vmpte} kB, peak host RSS {int(maxrss_kb) / 1024:.0f} MiB, {float(seconds):.1f} s")
    out["memory"] = {"bytes_per_table": per_table, "bytes_per_page": per_page,
                     "python_heap_peak": py_bytes, "madv_free_seed_peak_rss_kb": int(maxrss_kb),
                     "madv_free_seed_resident_pages": int(resident)}


def section_scale(args, workdir, out):
    print("\n1/16 of the production case (VIRT 3.4 TiB, RES 37 GiB, 1.8 M PTE tables)")
    results = {}
    for reclaim in (False, True):
        res = subprocess.run([sys.executable, str(HERE / "scale.py"), "--json",
                              "--pt-reclaim" if reclaim else "--no-pt-reclaim"],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout)
        results["with" if reclaim else "without"] = r
        print(f"  {'with' if reclaim else 'without'} PT reclaim: VmPTE {r['vmpte_before_kb']:,} -> "
              f"{r['vmpte_after_kb']:,} kB, RSS {r['rss_before_kb'] // 1024:,} -> "
              f"{r['rss_after_kb'] // 1024:,} MiB, {r['seconds']:.1f} s, peak host RSS "
              f"{r['peak_rss_kb'] / 1048576:.1f} GiB")
    out["scale"] = results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="seed,bulk,memory,scale")
    p.add_argument("--iterations", type=int, default=2560,
                   help="seed-loop iterations on the host kernel (25600 = the full 50 GiB)")
    p.add_argument("--rounds", type=int, default=7,
                   help="full runs of the core's seed loop; the best one counts")
    p.add_argument("--bulk", type=int, default=1_000_000, help="accesses for the bulk comparison")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    out = {}
    sections = {"seed": section_seed, "bulk": section_bulk, "memory": section_memory,
                "scale": section_scale}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.only.split(","):
            sections[name](args, workdir, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
