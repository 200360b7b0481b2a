"""Random scripts, run on the host kernel and in the simulator: they must agree exactly.

Each seed is one script of ``N_OPS`` operations from ``ptreclaim.randscript.generate``
(legal: no touch faults; ranges cross holes, VMA edges, 2 MiB / 1 GiB / 512 GiB boundaries;
invalid advice, unaligned starts...).  It runs with real syscalls (``ptreclaim.kernel.run``)
and in the simulator configured like the host (``kernel.host_config()``); for every
operation the errno, the fault address, mmap's return value and every /proc status field
the runner reports (VmPTE, VmRSS, RssAnon, RssFile, RssShmem, VmSize, VmLck, VmSwap, as
deltas from the start of the script) must be equal.  docs/validation.md has the figures.

A failure names its seed and prints the command that shows the whole comparison.
These skip only off Linux (or without 4 KiB pages) and when the runner's window cannot
be mapped in this process.
"""

import functools
import sys

import pytest

from ptreclaim import randscript as R
from ptreclaim import script as S

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the host-kernel runner needs Linux"),
]

if sys.platform.startswith("linux"):
    from ptreclaim import kernel

N_OPS = 80
CORE_SEEDS = range(300)                 # every one against the compiled core
REFERENCE_SEEDS = range(0, 300, 6)      # 50 of them against the reference model too


@pytest.fixture(scope="module")
def host():
    """The host configuration; skips when the host or the window cannot be used."""
    try:
        cfg = kernel.host_config()
        kernel.run("madvise 0 0 NORMAL\n")
    except kernel.HostUnsupported as e:
        pytest.skip(f"no host-kernel runner here: {e}")
    except kernel.WindowBusy as e:
        pytest.skip(f"the base cannot be mapped: {e}")
    return cfg


@functools.lru_cache(maxsize=None)
def script(seed):
    return tuple(R.generate(N_OPS, seed))


@functools.lru_cache(maxsize=None)
def on_kernel(seed):
    return kernel.run(list(script(seed)))


def compare(seed, impl, host):
    ops = list(script(seed))
    kres = on_kernel(seed)
    if impl == "core":
        from ptreclaim._core import MM
    else:
        from ptreclaim._reference import MM
    sres = S.run(ops, MM(pt_reclaim=host["pt_reclaim"], thp=host["thp"]))
    assert len(kres) == len(sres) == N_OPS
    repro = f"python -m ptreclaim compare --random {N_OPS} --seed {seed} --impl {impl}"
    for op, k, s in zip(ops, kres, sres):
        # The generator only touches what is mapped with the needed permission: a fault on
        # the kernel means the generator (or its oracle) got the layout wrong.
        if isinstance(op, S.Touch):
            assert k.errno == 0, (
                f"seed {seed}, line {op.lineno}: '{op}' faulted on the kernel at "
                f"{k.fault - S.DEFAULT_BASE:#x}: the generator made an illegal script\n  {repro}")
        if R.outcome(k) != R.outcome(s):
            fields = [f for f in S.FIELDS if k.delta[f] != s.delta[f]]
            pytest.fail(
                f"seed {seed}, line {op.lineno}: '{op}': kernel and {impl} differ"
                f" (earlier lines agree)\n"
                f"  errno  kernel {S.errno_name(k.errno)}, {impl} {S.errno_name(s.errno)}\n"
                + "".join(f"  {f}  kernel {k.delta[f]}, {impl} {s.delta[f]}\n" for f in fields)
                + (f"  ret/fault  kernel {k.ret}/{k.fault}, {impl} {s.ret}/{s.fault}\n"
                   if (k.ret, k.fault) != (s.ret, s.fault) else "")
                + f"  reproduce: {repro}",
                pytrace=False,
            )


@pytest.mark.parametrize("seed", CORE_SEEDS)
def test_core_agrees_with_kernel(host, seed):
    compare(seed, "core", host)


@pytest.mark.parametrize("seed", REFERENCE_SEEDS)
def test_reference_agrees_with_kernel(host, seed):
    compare(seed, "reference", host)


# --- the generator ---------------------------------------------------------------------------

def test_scripts_are_deterministic():
    assert R.generate(N_OPS, 7) == R.generate(N_OPS, 7)
    assert R.generate(N_OPS, 7) != R.generate(N_OPS, 8)
    text = R.generate_text(20, 3)
    assert S.parse(text) == R.generate(20, 3)
    assert [op.lineno for op in R.generate(20, 3)] == list(range(1, 21))


def test_scripts_cover_what_they_should():
    """The 300 scripts exercise everything the comparison claims to compare."""
    ops = [op for seed in CORE_SEEDS for op in script(seed)]
    rng = [op for op in ops if isinstance(op, (S.Munmap, S.Mprotect, S.Mlock, S.Munlock, S.Madvise))]
    advice = {op.advice for op in ops if isinstance(op, S.Madvise)}
    assert set(R.VALID_ADVICE) <= advice
    assert advice & set(R.INVALID_ADVICE)
    assert not advice & set(R.OPTIONAL_ADVICE)  # the default configuration leaves them out
    mmaps = [op for op in ops if isinstance(op, S.Mmap)]
    for flag in ("shared", "populate", "locked", "noreserve", "fixed"):
        assert any(getattr(op, flag) for op in mmaps), flag
        assert not all(getattr(op, flag) for op in mmaps), flag
    touches = [op for op in ops if isinstance(op, S.Touch)]
    assert any(op.write for op in touches) and not all(op.write for op in touches)
    for cls in (S.Munmap, S.Mprotect, S.Madvise):
        assert any(isinstance(op, cls) and op.addr % 4096 for op in rng), cls  # EINVAL cases
    assert any(op.length >= 1 << 63 for op in rng)  # lengths that wrap past 2**64
    G = 1 << 30

    def crosses(op, size):
        end = op.addr + op.length
        return op.length < 1 << 63 and op.addr // size != (end - 1) // size

    for size in (2 << 20, G):
        assert sum(crosses(op, size) for op in rng) > 50, size
    assert any(op.addr + op.length == 512 * G for op in ops if op.length < 1 << 63)
    assert any(op.addr < G for op in ops) and any(op.addr >= 511 * G for op in ops)


def test_touches_stay_out_of_hugepage_vmas():
    """With THP 'madvise' a fault in a VM_HUGEPAGE VMA maps a 2 MiB page (not simulated yet):
    the default scripts never access such a VMA; Config(thp_faults=True) allows it."""
    from ptreclaim import constants as C
    from ptreclaim._reference import MM
    hits = 0
    for seed in range(40):
        mm = MM()
        for op in script(seed):
            if isinstance(op, (S.Touch, S.Mlock)) or (
                    isinstance(op, S.Madvise) and op.advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE)):
                lo, hi = S.DEFAULT_BASE + op.addr, S.DEFAULT_BASE + op.addr + op.length
                hits += any(f & C.VM_HUGEPAGE for s, e, f, _ in mm.vmas() if s < hi and e > lo)
            S._apply(mm, op, S.DEFAULT_BASE)
    assert hits == 0


def test_optional_advice_can_be_switched_on():
    cfg = R.DEFAULT_CONFIG.with_advice(*R.OPTIONAL_ADVICE)
    advice = {op.advice for seed in range(40) for op in R.generate(N_OPS, seed, cfg) if isinstance(op, S.Madvise)}
    assert set(R.OPTIONAL_ADVICE) <= advice


def test_minimize_finds_the_differing_line():
    """The delta-debugging helper keeps the last differing operation and what it needs."""
    from ptreclaim._reference import MM
    ops = list(script(1))  # PT reclaim first shows at its line 18
    with_reclaim = lambda o: S.run(o, MM(pt_reclaim=True))        # noqa: E731
    without = lambda o: S.run(o, MM(pt_reclaim=False))            # noqa: E731
    small = R.minimize(ops, with_reclaim, without)
    assert small is not None and len(small) < len(ops)
    assert R.first_difference(with_reclaim(small), without(small)) == len(small) - 1
