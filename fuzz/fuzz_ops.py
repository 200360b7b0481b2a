"""Fuzz the compiled core against the reference model with atheris.

Bytes are decoded into the operation vocabulary of tests/differential.py (the one the
Hypothesis state machine uses) and run on both implementations; after every operation
the results, the whole observable state and check() on both are compared. Any
disagreement raises differential.Divergence, which atheris reports as a crash and saves
as crash-<sha1> in the working directory.

    python fuzz/fuzz_ops.py -max_total_time=60            # fuzz (needs atheris)
    python fuzz/fuzz_ops.py -max_total_time=60 corpus/    # ... growing a corpus directory
    python fuzz/fuzz_ops.py --replay crash-1234 corpus/   # replay files, no atheris needed

tests/test_fuzz_harness.py replays fixed inputs and any fuzz/crashes/* through
``run_one`` so the decoder keeps working.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The shared vocabulary lives in tests/; the repository root makes an in-place build
# (setup.py build_ext --inplace) importable when the package is not installed.
sys.path.insert(0, os.path.join(ROOT, "tests"))
if ROOT not in sys.path:
    sys.path.append(ROOT)

# At most this many operations per input: long inputs would only slow the fuzzer
# down (the reference model is the slow side), short ones already reach every path.
MAX_OPS = 48

OPS = ("mmap", "mmap_any", "munmap", "mprotect", "mlock", "munlock", "madvise", "touch", "touch",
       "mremap", "file", "mmap_file", "mmap_file", "close", "fork", "exit", "in")
# What a second configuration byte selects: THP mode, a swap device, 5-level paging.
THP_MODES = ("madvise", "madvise", "always", "never")
SWAP_PAGES = (0, 0, 300, 4096)


class Reader:
    """Consumes an input front to back; once it is used up every read gives 0."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def left(self):
        return self.pos < len(self.data)

    def byte(self):
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n):
        """An int in [0, n): one byte, or two when n > 256."""
        value = self.byte()
        if n > 256:
            value = value << 8 | self.byte()
        return value % n


def decode(data):
    """(pair configuration, list of operations) encoded by data."""
    from differential import (ADVICES, ANCHORS, DELTAS, FILE_OFFSETS, FILE_SIZES, LENGTHS, MAP_EXTRA,
                              MAP_TYPES, MREMAP_FLAGS, NR_FDS, PROTS)
    from differential import UNSIMULATED_IN_CORE

    r = Reader(data)
    c = r.byte()
    c2 = r.byte()
    config = dict(
        pt_reclaim=(True, True, False, "seed")[c & 3],
        split_ptlocks=not (c >> 2 & 3 == 3),
        **((dict(max_frames=None, totalram_pages=None),) * 3
           + (dict(max_frames=600, totalram_pages=None), dict(max_frames=3000, totalram_pages=1024)))[(c >> 4) % 5],
        thp=THP_MODES[c2 & 3],
        swap_pages=SWAP_PAGES[c2 >> 2 & 3],
        paging_levels=5 if c2 >> 4 & 3 == 3 else 4,
    )

    def addr(mmap=False):
        return (r.below(4 if mmap else 3), r.below(len(ANCHORS)), r.below(len(DELTAS)))

    def length(small=False):
        kind = r.below(4)
        if kind == 3:
            return (-1 - r.below(2), 1 + r.below(1100))
        return (r.below(12 if small else len(LENGTHS)), 0)

    def one(name):
        if name == "mmap":
            # The common case: anonymous, a usual prot, placed fixed/noreplace/hinted.
            placement = (1, 1, 2, 0)[r.below(4)]
            options = (4, 0, 8 | 4, 16, 8)[r.below(5)]
            return ("mmap", addr(True), length(True), (0, 1, 2, 4)[r.below(4)],
                    (0, 3)[r.below(2)], placement | options, True, 0)
        if name == "mmap_any":
            return ("mmap", addr(True), length(), r.below(len(PROTS)), r.below(len(MAP_TYPES)),
                    r.below(1 << len(MAP_EXTRA)), r.below(4) != 0, r.below(7))
        if name in ("munmap", "mlock", "munlock"):
            return (name, addr(), length())
        if name == "mprotect":
            return (name, addr(), length(), r.below(len(PROTS)))
        if name == "madvise":
            advice = r.below(len(ADVICES))
            if ADVICES[advice] in UNSIMULATED_IN_CORE:
                advice = 0  # not generated until the core simulates it (see differential)
            return (name, addr(), length(), advice)
        if name == "mremap":
            return ("mremap", addr(), length(), length(), r.below(len(MREMAP_FLAGS)), addr(True))
        if name == "file":
            # Mostly shmem of whole 2 MiB spans or more, mostly cached and writable.
            return ("file", r.below(len(FILE_SIZES)), r.below(3) != 0, r.below(4) != 0, r.below(4) != 0)
        if name == "mmap_file":
            placement = (1, 1, 2, 0)[r.below(4)]
            return ("mmap_file", addr(True), length(True), (0, 1, 2, 4)[r.below(4)], r.below(2) != 0,
                    placement | (0, 4, 8, 16)[r.below(4)], r.below(NR_FDS), r.below(len(FILE_OFFSETS)))
        if name == "close":
            return ("close", r.below(NR_FDS))
        if name == "fork":
            return (name,)
        return ("touch", addr(), length(True), r.below(4) != 0)

    ops = []
    while r.left() and len(ops) < MAX_OPS:
        name = OPS[r.below(len(OPS))]
        if name == "in":
            # The next operation, in process k (0: the first; the others, children).
            k = r.below(4)
            name = OPS[r.below(len(OPS) - 2)]
            ops.append(("in", k, one(name)))
        elif name == "exit":
            # A child ends (the first process lives to the end); resolved in run_one.
            ops.append(("exit", r.below(3)))
        else:
            ops.append(one(name))
    return config, ops


def run_one(data):
    """Run one input; raises differential.Divergence on any disagreement."""
    from differential import Pair

    config, ops = decode(data)
    pair = Pair(**config)
    pair.compare()
    for op in ops:
        if op[0] == "exit":
            if len(pair.procs) > 1:
                pair.step(("in", 1 + op[1] % (len(pair.procs) - 1), ("exit",)))
            continue
        pair.step(op)
    pair.finish()
    return len(ops)


def replay(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(os.path.join(path, f) for f in os.listdir(path)))
        else:
            files.append(path)
    for path in files:
        with open(path, "rb") as f:
            run_one(f.read())
    print(f"replayed {len(files)} inputs without a divergence")


def main():
    if sys.argv[1:2] == ["--replay"]:
        replay(sys.argv[2:])
        return
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris); "
                 "use --replay FILE_OR_DIR... to run inputs without it")
    # Coverage feedback comes from the Python side (the reference model and the
    # decoder); the compiled core is not instrumented. A wrapper that imported them
    # already gets everything loaded instrumented instead.
    if "differential" in sys.modules:
        atheris.instrument_all()
    else:
        with atheris.instrument_imports():
            import differential  # noqa: F401
            import ptreclaim._reference  # noqa: F401
    atheris.Setup(sys.argv, run_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
