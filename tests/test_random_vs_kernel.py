"""Random scripts, run on the host kernel and in the simulator: they must agree exactly.

Each seed is one script of ``N_OPS`` operations from ``ptreclaim.randscript.generate``
(legal: no touch faults; ranges cross holes, VMA edges, 2 MiB / 1 GiB / 512 GiB boundaries;
invalid advice, unaligned starts...).  It runs with real syscalls (``ptreclaim.kernel.run``)
and in the simulator configured like the host (``kernel.host_config()``); for every
operation the errno, the fault address, mmap's return value and every /proc status field
the runner reports (VmPTE, VmRSS, RssAnon, RssFile, RssShmem, VmSize, VmLck, VmSwap, as
deltas from the start of the script) must be equal.  docs/validation.md has the figures.

The ``fork`` profile adds one ``fork`` or ``forkp`` at a random line of each script; the
``thp-fork`` profile adds one too, and ``MADV_HUGEPAGE``/``MADV_NOHUGEPAGE`` on 2 MiB-aligned
mappings whose accesses fault in transparent huge pages; the ``file`` profile adds one too,
and mappings of small cached files (regular and memfd), ``close`` and ``mremap``; the
``shmem-thp`` profile is the ``file`` profile with memfds and shared memory in 2 MiB spans
and ``MADV_COLLAPSE``, which makes shmem huge pages (``randscript.PROFILES``).

A failure names its seed and prints the command that shows the whole comparison.
These skip only off Linux (or without 4 KiB pages) and when the runner's window cannot
be mapped in this process.
"""

import functools
import io
import os
import pickle
import subprocess
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
FORK_SEEDS = range(200)                 # profile "fork": one fork or forkp each, against the core
THP_SEEDS = range(200)                  # profile "thp-fork": THP advice and a fork each
FILE_SEEDS = range(200)                 # profile "file": file mappings and a fork each
SHMEM_THP_SEEDS = range(200)            # profile "shmem-thp": MADV_COLLAPSE of shmem and a fork each


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
def script(seed, profile="default"):
    if profile == "default":
        return tuple(R.generate(N_OPS, seed))
    return tuple(R.generate(N_OPS, seed, R.PROFILES[profile]))


@functools.lru_cache(maxsize=None)
def on_kernel(seed, profile="default"):
    return kernel.run(list(script(seed, profile)))


def _repro(seed, impl, profile):
    opt = "" if profile == "default" else f" --profile {profile}"
    return f"python -m ptreclaim compare --random {N_OPS} --seed {seed}{opt} --impl {impl}"


def disagreement(seed, impl, profile, kres, sres):
    """``None`` if the kernel's and the simulator's results agree, else the report."""
    ops = list(script(seed, profile))
    assert len(kres) == len(sres) == N_OPS
    repro = _repro(seed, impl, profile)
    for op, k, s in zip(ops, kres, sres):
        # The generator only touches what is mapped with the needed permission: a fault on
        # the kernel means the generator (or its oracle) got the layout wrong.
        if isinstance(op, S.Touch) and k.errno:
            return (f"seed {seed}, line {op.lineno}: '{op}' faulted on the kernel at "
                    f"{k.fault - S.DEFAULT_BASE:#x}: the generator made an illegal script\n  {repro}")
        if R.outcome(k) != R.outcome(s):
            kd, sd = k.delta, s.delta
            fields = [f for f in S.FIELDS if kd[f] != sd[f]]
            return (
                f"seed {seed}, line {op.lineno}: '{op}': kernel and {impl} differ"
                f" (earlier lines agree)\n"
                f"  errno  kernel {S.errno_name(k.errno)}, {impl} {S.errno_name(s.errno)}\n"
                + "".join(f"  {f}  kernel {kd[f]}, {impl} {sd[f]}\n" for f in fields)
                + (f"  ret/fault  kernel {k.ret}/{k.fault}, {impl} {s.ret}/{s.fault}\n"
                   if (k.ret, k.fault) != (s.ret, s.fault) else "")
                + f"  reproduce: {repro}")
    return None


def compare(seed, impl, host, profile="default"):
    ops = list(script(seed, profile))
    if impl == "core":
        from ptreclaim._core import MM
    else:
        from ptreclaim._reference import MM
    sres = S.run(ops, MM(pt_reclaim=host["pt_reclaim"], thp=host["thp"]))
    report = disagreement(seed, impl, profile, on_kernel(seed, profile), sres)
    if report:
        pytest.fail(report, pytrace=False)


@pytest.mark.parametrize("seed", CORE_SEEDS)
def test_core_agrees_with_kernel(host, seed):
    compare(seed, "core", host)


@pytest.mark.parametrize("seed", REFERENCE_SEEDS)
def test_reference_agrees_with_kernel(host, seed):
    compare(seed, "reference", host)


@pytest.mark.parametrize("seed", FORK_SEEDS)
def test_core_agrees_with_kernel_across_fork(host, seed):
    """One fork or forkp per script, at a random line; no THP fault (as the default)."""
    compare(seed, "core", host, "fork")


# --- THP advice and a fork ---------------------------------------------------------------------

_ISOLATED = """
import pickle, sys
path, pt_reclaim, thp, jobs = pickle.load(sys.stdin.buffer)
sys.path.insert(0, path)
from ptreclaim import script as S
from ptreclaim._core import MM
for seed, text in jobs:
    res = S.run(text, MM(pt_reclaim=pt_reclaim, thp=thp))
    pickle.dump((seed, res), sys.stdout.buffer)
    sys.stdout.buffer.flush()
"""


def core_results_isolated(seeds, profile, host):
    """``{seed: results}`` of the core, run in a child process; a seed whose script kills
    the child (a crash in code still landing) maps to a message that says so instead."""
    path = os.path.dirname(os.path.dirname(os.path.abspath(S.__file__)))
    out, todo = {}, list(seeds)
    while todo:
        jobs = [(seed, S.dumps(script(seed, profile))) for seed in todo]
        proc = subprocess.run([sys.executable, "-c", _ISOLATED], capture_output=True,
                              input=pickle.dumps((path, host["pt_reclaim"], host["thp"], jobs)))
        stream = io.BytesIO(proc.stdout)
        while stream.tell() < len(proc.stdout):
            try:
                seed, res = pickle.load(stream)
            except Exception:
                break
            out[seed] = res
        todo = [seed for seed in todo if seed not in out]
        if proc.returncode == 0 or not todo:
            assert not todo, proc.stderr.decode(errors="replace")[-2000:]
            break
        seed = todo.pop(0)
        out[seed] = (f"seed {seed}: the core died (exit status {proc.returncode}) running the script\n"
                     f"  reproduce: python -m ptreclaim run --random {N_OPS} --seed {seed} "
                     f"--profile {profile} --on sim --impl core")
    return out


def core_agrees_in_profile(seeds, profile, host, what):
    """Every script of ``profile`` agrees with the kernel on the core (run isolated); the
    failure lists the seeds that differ and shows the first three."""
    results = core_results_isolated(seeds, profile, host)
    bad = {}
    for seed in seeds:
        res = results[seed]
        bad[seed] = res if isinstance(res, str) else disagreement(
            seed, "core", profile, on_kernel(seed, profile), res)
    bad = {seed: why for seed, why in bad.items() if why}
    if bad:
        pytest.fail(f"{len(bad)} of {len(seeds)} {what} scripts differ: seeds {sorted(bad)}\n"
                    + "\n".join(bad[seed] for seed in sorted(bad)[:3]), pytrace=False)


def test_core_agrees_with_kernel_thp_fork(host):
    """200 scripts with MADV_HUGEPAGE/NOHUGEPAGE (THP faults) and a fork each: all agree.

    One test for all of them, so that it can be marked as a whole (a strict xfail per seed
    would pass on the seeds that never fault a huge page); the core runs in a child process
    so that a crash in THP code fails this test instead of ending the session.  The
    message lists the seeds that differ."""
    core_agrees_in_profile(THP_SEEDS, "thp-fork", host, "THP")


def test_thp_scripts_are_legal_and_fault_huge_pages(host):
    """The THP scripts run on this kernel without a touch fault, and huge pages happen:
    touches that make more memory resident than the pages they access."""
    if host["thp"] == "never":
        pytest.skip("THP is off on this host")
    huge = 0
    for seed in THP_SEEDS:
        ops, kres = script(seed, "thp-fork"), on_kernel(seed, "thp-fork")
        prev = None
        for op, k in zip(ops, kres):
            if isinstance(op, S.Touch):
                assert k.errno == 0, f"seed {seed}, line {op.lineno}: '{op}' faulted: an illegal script"
                pages = (S.DEFAULT_BASE + op.addr + op.length - 1) // 4096 - (S.DEFAULT_BASE + op.addr) // 4096 + 1
                if prev is not None and k.delta["RssAnon"] - prev.delta["RssAnon"] > 4 * pages:
                    huge += 1
            prev = k
    assert huge >= len(THP_SEEDS) // 2  # 1.3 per script on the lab machine


# --- file mappings and a fork --------------------------------------------------------------

def test_core_agrees_with_kernel_file(host):
    """200 scripts with file mappings and a fork each: all agree (one test, as thp-fork)."""
    core_agrees_in_profile(FILE_SEEDS, "file", host, "file")


def test_file_scripts_are_legal_and_map_files(host):
    """The file scripts run on this kernel without a touch fault (no SIGBUS past EOF, no
    write to a read-only mapping), and their touches do map file and memfd pages."""
    touches = {"RssFile": 0, "RssShmem": 0}
    for seed in FILE_SEEDS:
        ops, kres = script(seed, "file"), on_kernel(seed, "file")
        prev = None
        for op, k in zip(ops, kres):
            if isinstance(op, S.Touch):
                assert k.errno == 0, f"seed {seed}, line {op.lineno}: '{op}' faulted: an illegal script"
                for f in touches:
                    touches[f] += prev is not None and k.delta[f] > prev.delta[f]
            prev = k
    assert touches["RssFile"] > 200 and touches["RssShmem"] > 200, touches


def test_file_profile_covers_files():
    """file: regular files and memfds, O_RDONLY ones, partial last pages; shared and private
    mappings at offsets; close, EBADF, EINVAL offsets; mremap shrinking, growing, moving;
    PAGEOUT and REMOVE over file mappings; a fork in every script."""
    from ptreclaim import constants as C
    ops = [op for seed in FILE_SEEDS for op in script(seed, "file")]
    files = [op for op in ops if isinstance(op, S.CreateFile)]
    assert {f.shmem for f in files} == {True, False} and {f.ro for f in files} == {True, False}
    assert any(f.size % 4096 for f in files) and not any(f.uncached for f in files)
    fmaps = [op for op in ops if isinstance(op, S.Mmap) and op.file is not None]
    assert {op.shared for op in fmaps} == {True, False}
    assert sum(op.offset > 0 for op in fmaps) > 200 and any(op.offset % 4096 for op in fmaps)
    assert sum(isinstance(op, S.Close) for op in ops) > 20
    moves = [op for op in ops if isinstance(op, S.Mremap)]
    assert any(op.new_length < op.length for op in moves)
    assert any(op.new_length > op.length for op in moves)
    assert any(op.flags == C.MREMAP_MAYMOVE | C.MREMAP_FIXED for op in moves)
    assert not any(op.flags & C.MREMAP_MAYMOVE and not op.flags & C.MREMAP_FIXED for op in moves)
    assert {op.advice for op in ops if isinstance(op, S.Madvise)} >= {C.MADV_PAGEOUT, C.MADV_REMOVE}
    for seed in FILE_SEEDS:
        assert sum(isinstance(op, (S.Fork, S.ForkP)) for op in script(seed, "file")) == 1


# --- shmem huge pages and a fork ---------------------------------------------------------------

def test_core_agrees_with_kernel_shmem_thp(host):
    """200 scripts that collapse shared memory into huge pages, with a fork each: all agree."""
    core_agrees_in_profile(SHMEM_THP_SEEDS, "shmem-thp", host, "shmem-thp")


def test_reference_agrees_with_kernel_shmem_thp(host):
    """A quarter of them against the reference model too."""
    from ptreclaim import _reference
    bad = {}
    for seed in SHMEM_THP_SEEDS[::4]:
        ops = list(script(seed, "shmem-thp"))
        sres = S.run(ops, _reference.MM(pt_reclaim=host["pt_reclaim"], thp=host["thp"]))
        why = disagreement(seed, "reference", "shmem-thp", on_kernel(seed, "shmem-thp"), sres)
        if why:
            bad[seed] = why
    if bad:
        pytest.fail(f"{len(bad)} shmem-thp scripts differ on the reference: seeds {sorted(bad)}\n"
                    + "\n".join(bad[seed] for seed in sorted(bad)[:3]), pytrace=False)


def test_shmem_thp_scripts_collapse_and_map_huge_pages(host):
    """The shmem-thp scripts are legal on this kernel, and their MADV_COLLAPSE calls do turn
    PTE tables into PMD mappings of shared memory: a table freed (VmPTE down) with RssShmem
    kept or grown, and a collapse that maps a whole 2 MiB (RssShmem +2048 kB)."""
    from ptreclaim import constants as C
    freed = mapped = 0
    for seed in SHMEM_THP_SEEDS:
        ops, kres = script(seed, "shmem-thp"), on_kernel(seed, "shmem-thp")
        prev = None
        for op, k in zip(ops, kres):
            if isinstance(op, S.Touch):
                assert k.errno == 0, f"seed {seed}, line {op.lineno}: '{op}' faulted: an illegal script"
            if isinstance(op, S.Madvise) and op.advice == C.MADV_COLLAPSE and k.errno == 0 and prev:
                d_pte = k.delta["VmPTE"] - prev.delta["VmPTE"]
                d_shmem = k.delta["RssShmem"] - prev.delta["RssShmem"]
                freed += d_pte < 0 and d_shmem >= 0
                mapped += d_shmem >= 2048
            prev = k
    assert freed >= 20 and mapped >= 40, (freed, mapped)


def test_only_the_file_profile_has_files():
    for profile in ("default", "fork", "thp-fork"):
        for seed in range(20):
            assert not any(isinstance(op, (S.CreateFile, S.Close)) or isinstance(op, S.Mmap) and op.file
                           for op in script(seed, profile)), (profile, seed)


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


def test_profiles_fork_once():
    """Each profile script has exactly one fork or forkp, at varying lines; both kinds occur.
    The default scripts have none."""
    assert not any(isinstance(op, (S.Fork, S.ForkP)) for seed in range(40) for op in script(seed))
    for profile, seeds in (("fork", FORK_SEEDS), ("thp-fork", THP_SEEDS)):
        kinds, lines = set(), set()
        for seed in seeds:
            forks = [op for op in script(seed, profile) if isinstance(op, (S.Fork, S.ForkP))]
            assert len(forks) == 1, (profile, seed)
            kinds.add(type(forks[0]))
            lines.add(forks[0].lineno)
            assert 1 < forks[0].lineno < N_OPS
        assert kinds == {S.Fork, S.ForkP}, profile
        assert len(lines) > 40, profile


def test_thp_profile_covers_thp_advice():
    """thp-fork: MADV_HUGEPAGE and MADV_NOHUGEPAGE, on 2 MiB-aligned whole spans and on
    unaligned ranges; 2 MiB-aligned mappings of whole spans, and some a page off."""
    from ptreclaim import constants as C
    M2 = 2 << 20
    ops = [op for seed in THP_SEEDS for op in script(seed, "thp-fork")]
    advice = [op for op in ops if isinstance(op, S.Madvise)
              and op.advice in (C.MADV_HUGEPAGE, C.MADV_NOHUGEPAGE)]
    assert {op.advice for op in advice} == {C.MADV_HUGEPAGE, C.MADV_NOHUGEPAGE}
    assert sum(op.addr % M2 == 0 and op.length % M2 == 0 for op in advice) > 200
    assert sum(op.addr % M2 != 0 or op.length % M2 != 0 for op in advice) > 100
    mmaps = [op for op in ops if isinstance(op, S.Mmap)]
    assert sum(op.addr % M2 == 0 and op.length % M2 == 0 for op in mmaps) > 300
    assert any(op.addr % M2 == 4096 or op.length % M2 in (4096, M2 - 4096) for op in mmaps)


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
