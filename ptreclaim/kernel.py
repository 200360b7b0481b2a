"""Run operation scripts on the host Linux kernel, for comparison with the simulator.

``run(script)`` executes the script's syscalls and touches for real, in a process forked
for the purpose, and returns the same ``script.Result`` objects as ``script.run`` does on
the simulator.  The runner (``ptreclaim._kernelrun``, C) faults in everything it needs
before it reads its baseline, so ``Result.delta`` counts the script's own page tables and
pages, to the kB; ``docs/kernel-runner.md`` explains how and why that holds.

Addresses are ``base + ADDR``; ``[base, base + 512 GiB)`` (the *window*) must be empty in
the runner, and every operation must stay inside it (or have a length that wraps past
2**64, which every syscall rejects before acting), so a script can never unmap or alter
the runner's own memory.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import sys
from array import array

from . import constants as C
from .script import (DEFAULT_BASE, FIELDS, Close, CreateFile, Fork, ForkP, Madvise, Mlock, Mmap,
                     Mprotect, Mremap, Munlock, Munmap, Result, ScriptError, Touch, _as_ops,
                     absolute, absolute_new_addr, fork_depth, parse)

__all__ = ["HostUnsupported", "KernelRunError", "WindowBusy", "WINDOW", "KernelResults",
           "host_config", "run"]

# One PUD table's reach: a script that starts in an empty 512 GiB slot allocates its PUD
# table on the first touch, as in the measured scenarios.
WINDOW = C.PGDIR_SIZE

_U64 = 1 << 64


class HostUnsupported(RuntimeError):
    """This host cannot run scripts: not Linux, or not 4 KiB pages."""


class KernelRunError(RuntimeError):
    """The runner could not run the script to the end; ``results`` holds what it did."""

    def __init__(self, message, results=()):
        super().__init__(message)
        self.results = list(results)


class WindowBusy(KernelRunError):
    """Something is already mapped in ``[base, base + WINDOW)`` in the runner."""

    def __init__(self, message, start, end):
        super().__init__(message)
        self.start, self.end = start, end


class KernelResults(list):
    """The list of ``Result`` of one run; ``config`` is ``host_config()`` at run time."""

    config: dict = {}


# --- host -------------------------------------------------------------------------------------

def _check_host():
    if not sys.platform.startswith("linux"):
        raise HostUnsupported(f"the host-kernel runner needs Linux; this host is {sys.platform!r}")
    if os.sysconf("SC_PAGE_SIZE") != C.PAGE_SIZE:
        raise HostUnsupported(f"the runner needs 4 KiB pages; this host has {os.sysconf('SC_PAGE_SIZE')}")


def _ext():
    try:
        from . import _kernelrun
    except ImportError as e:
        raise ImportError(
            "ptreclaim._kernelrun (the C host-kernel runner, ptreclaim/_kernelrun.c) is not "
            f"built: {e}; build the package (pip install -e . or setup.py build_ext --inplace)"
        ) from e
    return _kernelrun


def _kconfig_value(name):
    """``'y'``/``'m'``/a value, ``'n'`` if 'is not set', ``None`` if no config is readable."""
    sources = [("/proc/config.gz", gzip.open), (f"/boot/config-{os.uname().release}", open)]
    for path, opener in sources:
        try:
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(name + "="):
                return line.split("=", 1)[1].strip('"')
            if line == f"# {name} is not set":
                return "n"
        # A config without the option at all: the kernel predates it or the arch lacks it.
        return "n"
    return None


@functools.lru_cache(maxsize=None)
def _pt_reclaim():
    """(enabled, how it was found).  Cached: only a reboot changes it."""
    value = _kconfig_value("CONFIG_PT_RECLAIM")
    if value is not None:
        return value == "y", "config"
    # No readable config: ask the kernel.  A PMD-aligned, fully covered DONTNEED of a
    # populated private span frees its PTE table only with PT reclaim (SC-03).
    probe = parse("mmap 0 2M rw private noreserve\ntouch 0 2M write\nmadvise 0 2M DONTNEED\n")
    res = _run(probe, DEFAULT_BASE, 60.0)
    return res[2].errno == 0 and res[2].status["VmPTE"] < res[1].status["VmPTE"], "probe"


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "never"  # a kernel without THP behaves as "never"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip()


def _paging_levels():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return 5 if " la57" in line else 4
    except OSError:
        pass
    return 4


def fs_type(path):
    """The file system type (``/proc/self/mounts``) that holds ``path``, or ``None``."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        return None
    return kind


def host_config():
    """``{"pt_reclaim": bool, "thp": "always"|"madvise"|"never", ...}`` of this host.

    Extra keys: ``pt_reclaim_source`` (``"config"`` or ``"probe"``), ``kernel`` (release),
    ``machine``, ``paging_levels``, ``file_fs`` (the file system type of the temporary
    directory, where ``file`` lines create their regular files).
    """
    import tempfile
    _check_host()
    enabled, source = _pt_reclaim()
    u = os.uname()
    return {
        "pt_reclaim": enabled,
        "thp": _thp_mode(),
        "pt_reclaim_source": source,
        "kernel": u.release,
        "machine": u.machine,
        "paging_levels": _paging_levels(),
        "file_fs": fs_type(tempfile.gettempdir()),
    }


# --- encoding ---------------------------------------------------------------------------------

def _check_window(op, a, base):
    """Refuse an operation that could act outside the window (on the runner's memory)."""
    start = a & ~(C.PAGE_SIZE - 1)
    end = (a + op.length + C.PAGE_SIZE - 1) & ~(C.PAGE_SIZE - 1)
    wend = base + WINDOW
    inside = base <= start <= wend and end <= wend
    # A range that wraps past 2**64 is rejected by every syscall before it acts (mlock acts
    # on at most the first page), so only its start must be inside.  A touch is ours to do.
    wraps = end >= _U64 and not isinstance(op, Touch)
    if not (inside or (wraps and base <= start < wend)):
        raise ScriptError(
            op.lineno,
            f"'{op}' reaches outside [base, base+512G) = [{base:#x}, {wend:#x}); the host "
            "runner refuses it, since it could change the runner's own memory",
        )


def _page_end(a, length):
    return (a + length + C.PAGE_SIZE - 1) & ~(C.PAGE_SIZE - 1)


def _check_mremap_window(op, a, base):
    """Refuse an mremap that could unmap, grow into or move onto memory outside the window.

    The source range and an in-place growth must lie inside the window, and so must the
    destination of MREMAP_FIXED or MREMAP_DONTUNMAP; a length past TASK_SIZE (or wrapping)
    is rejected by the kernel before it acts, so only its start must be inside.  A move to
    an address the kernel chooses is checked after the run (``_check_mremap_results``).
    """
    wend = base + WINDOW

    def fits(start, length):
        end = _page_end(start, length)
        if not base <= start < wend:
            return False
        return end <= wend or end > C.TASK_SIZE

    ok = fits(a, op.length) and fits(a, op.new_length)
    if op.flags & (C.MREMAP_FIXED | C.MREMAP_DONTUNMAP):
        n = absolute_new_addr(op, base)
        ok = ok and (fits(n, op.new_length) or _page_end(n, op.new_length) > C.TASK_SIZE)
    if not ok:
        raise ScriptError(
            op.lineno,
            f"'{op}' reaches outside [base, base+512G) = [{base:#x}, {wend:#x}); the host "
            "runner refuses it, since it could change the runner's own memory",
        )


def _encode(ops, base, kr, src_fds=None):
    """The op records; ``src_fds`` maps file names to the descriptors this process holds
    (the runner opens them again), ``None`` to check the script only."""
    words = array("Q")
    index = {}  # file name -> index in the runner's table
    for op in ops:
        rec = [0] * kr.OP_WORDS
        if isinstance(op, (Fork, ForkP)):
            rec[0] = kr.OPC_FORK if isinstance(op, Fork) else kr.OPC_FORKP
        elif isinstance(op, CreateFile):
            if len(index) == kr.MAX_FILES:
                raise ScriptError(op.lineno, f"at most {kr.MAX_FILES} 'file' lines per script")
            if op.size > MAX_FILE_SIZE:
                raise ScriptError(op.lineno, f"'{op}': the host runner creates files of at most "
                                  f"{MAX_FILE_SIZE >> 20} MiB")
            index[op.name] = len(index)
            rec[0], rec[1], rec[2] = kr.OPC_FILE, src_fds[op.name] if src_fds else 0, index[op.name]
            rec[3] = os.O_RDONLY if op.ro else os.O_RDWR
        elif isinstance(op, Close):
            rec[0], rec[2] = kr.OPC_CLOSE, index[op.name]
        elif isinstance(op, Mremap):
            a = absolute(op, base)
            _check_mremap_window(op, a, base)
            rec[0], rec[1], rec[2] = kr.OPC_MREMAP, a, op.length
            rec[4], rec[kr.OP_NEWLEN], rec[kr.OP_NEWADDR] = op.flags, op.new_length, absolute_new_addr(op, base)
        else:
            a = absolute(op, base)
            _check_window(op, a, base)
            rec[1], rec[2] = a, op.length
            if isinstance(op, Mmap):
                rec[0], rec[3], rec[4] = kr.OPC_MMAP, op.prot, op.flags
                if op.file is not None:
                    rec[kr.OP_FILEIDX], rec[kr.OP_OFFSET] = index[op.file] + 1, op.offset
            elif isinstance(op, Munmap):
                rec[0] = kr.OPC_MUNMAP
            elif isinstance(op, Mprotect):
                rec[0], rec[3] = kr.OPC_MPROTECT, op.prot
            elif isinstance(op, Mlock):
                rec[0] = kr.OPC_MLOCK
            elif isinstance(op, Munlock):
                rec[0] = kr.OPC_MUNLOCK
            elif isinstance(op, Madvise):
                rec[0], rec[3] = kr.OPC_MADVISE, op.advice
            elif isinstance(op, Touch):
                rec[0], rec[3] = kr.OPC_TOUCH, int(op.write)
            else:
                raise TypeError(f"cannot run {op!r} on the kernel")
        rec[3] &= 0xFFFFFFFF  # a C int, passed as its 32-bit pattern
        rec[5] = op.lineno
        words.extend(rec)
    return words.tobytes()


# The most a `file` line may ask the host for (it is written out on the temp file system).
MAX_FILE_SIZE = 1 << 30

_CHUNK = b"\x5a" * C.PAGE_SIZE


def _write_pages(fd, size):
    """Fill [0, size) with 4 KiB write()s: the page cache then holds 4 KiB folios (a write
    allocates a folio of the size it writes), as the simulator's cached files."""
    off = 0
    while off < size:
        off += os.pwrite(fd, _CHUNK[:min(C.PAGE_SIZE, size - off)], off)


def _create_file(op, tmpdir):
    """One ``file`` line on the host: a descriptor (O_RDWR) of a new, unnamed file."""
    if op.shmem:
        fd = os.memfd_create(f"ptreclaim-{op.name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, op.size)
            if not op.uncached:
                _write_pages(fd, op.size)
        except BaseException:
            os.close(fd)
            raise
        return fd
    try:
        # No name, so nothing is left behind whatever happens to this process.
        fd = os.open(tmpdir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        import tempfile
        fd, path = tempfile.mkstemp(prefix="ptreclaim-", dir=tmpdir)
        os.unlink(path)
    try:
        _write_pages(fd, op.size)
        # Clean pages: what the simulator's cached files hold; and DONTNEED drops only
        # clean ones.
        os.fsync(fd)
        if op.uncached:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _files(ops, tmpdir):
    """Create the script's files; closes this process's descriptors afterwards."""
    import tempfile
    if tmpdir is None:
        tmpdir = tempfile.gettempdir()
    fds = {}
    try:
        for op in ops:
            if isinstance(op, CreateFile):
                fds[op.name] = _create_file(op, tmpdir)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


_MAX_SO_RANGES = 16  # MAX_SO_RANGES of _kernelrun.c: the ranges it reads before the baseline


def _libc_address():
    """An address in the C library's code (its ``syscall`` function), or ``None``."""
    try:
        import ctypes
        return ctypes.cast(ctypes.CDLL(None).syscall, ctypes.c_void_p).value
    except (ImportError, OSError, AttributeError):
        return None


def _own_ranges(kr):
    """The readable mappings of this extension and of the C library: the runner and every
    process it forks read all their pages before their baseline.

    Code pages are file pages that a fork does not copy, so each child faults them in again,
    and fault-around maps with each one the neighbours that are in the page cache at that
    moment.  Which neighbours those are is the page cache's business (proactive reclaim,
    e.g. a DAMON ``pageout`` scheme, evicts cold unmapped file pages at any time), so a
    script's ``fork`` child and its calibration child could map a different number of
    C-library pages: ``RssFile`` 4 kB apart (docs/validation.md, Nondeterminism).  With
    every page read, each process maps all of them, and the runner's own mapping keeps
    them in the cache while the script runs.
    """
    path = os.path.realpath(kr.__file__)
    libc = _libc_address()
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6:
                s, e = (int(x, 16) for x in parts[0].split("-"))
                maps.append((s, e, parts[1], parts[5].rstrip("\n").removesuffix(" (deleted)")))
    paths = {path}
    paths.update(name for s, e, _, name in maps
                 if libc is not None and s <= libc < e and name.startswith("/"))
    ranges = [(s, e) for s, e, perms, name in maps if name in paths and perms.startswith("r")]
    if not any(name == path for *_, name in maps):
        raise KernelRunError(f"cannot find {path} in /proc/self/maps")
    if len(ranges) > _MAX_SO_RANGES:
        raise KernelRunError(f"too many mappings to read before the baseline: {len(ranges)}")
    return ranges


def _signed(v):
    return v - _U64 if v >= 1 << 63 else v


def _fields(words):
    return {name: (None if _signed(v) < 0 else v) for name, v in zip(FIELDS, words)}


@contextlib.contextmanager
def _one_cpu():
    """Run the runner (it inherits this thread's CPU mask) on one CPU, then restore the mask.

    Pages a process faults in wait in a per-CPU batch before they reach the LRU lists, and
    MADV_PAGEOUT drains only the batch of the CPU it runs on: a page still in another
    CPU's batch cannot be isolated and stays mapped.  With the runner free to migrate,
    PAGEOUT left 3 to 16 pages mapped in about 1 run of 50 (docs/validation.md); on one
    CPU it is exact, run after run.
    """
    try:
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved)})
    except (AttributeError, OSError):
        yield  # no affinity control here: the runs may show the batching noise
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


_SETUP_STEPS = {1: "reading /proc/self/maps", 2: "installing the SIGSEGV handler",
                3: "mapping the guard page", 4: "creating the pipe",
                5: "reading /proc/self/status", 6: "forking a calibration child"}


def _run(ops, base, timeout, tmpdir=None):
    _check_host()
    kr = _ext()
    if not kr.SUPPORTED:
        raise HostUnsupported("ptreclaim._kernelrun was built without Linux support")
    if not isinstance(base, int) or base % C.PAGE_SIZE or not 0 < base <= C.TASK_SIZE - WINDOW:
        raise ValueError(f"base must be a page-aligned user address with 512 GiB above it, not {base!r}")
    depth = fork_depth(ops)
    if depth > kr.MAX_FORK_DEPTH:
        raise ScriptError(ops[-1].lineno, f"at most {kr.MAX_FORK_DEPTH} 'fork' operations per script")
    _encode(ops, base, kr)  # refuse a bad script before creating any file
    if not ops:
        return KernelResults()
    # Pinned first: the files' pages, written here, then wait in the same CPU's batch
    # as the runner's own faults, which MADV_PAGEOUT drains (see _one_cpu()).
    with _one_cpu(), _files(ops, tmpdir) as src_fds:
        blob_ops = _encode(ops, base, kr, src_fds)
        wstatus, timed_out, blob = kr.run(blob_ops, base, WINDOW, _own_ranges(kr), depth, float(timeout))

    w = memoryview(blob).cast("Q")
    hdr = w[:kr.HDR_WORDS]
    nf = kr.NFIELDS
    cal_at = kr.HDR_WORDS
    res_at = cal_at + (kr.MAX_FORK_DEPTH + 1) * nf + len(ops) * kr.OP_WORDS
    baselines = [_fields(w[cal_at + k * nf: cal_at + (k + 1) * nf]) for k in range(depth + 1)]

    results = KernelResults()
    for i in range(hdr[kr.HDR_NDONE]):
        r = w[res_at + i * kr.RES_WORDS: res_at + (i + 1) * kr.RES_WORDS]
        err = _signed(r[kr.RES_ERRNO])
        op = ops[i]
        results.append(Result(
            op=op,
            errno=err,
            status=_fields(r[kr.RES_FIELDS:kr.RES_FIELDS + nf]),
            baseline=baselines[r[kr.RES_DEPTH]],
            fault=r[kr.RES_FAULT] if err < 0 else None,
            ret=r[kr.RES_RET] if isinstance(op, (Mmap, Mremap)) and err == 0 else None,
            depth=r[kr.RES_DEPTH],
        ))

    state = hdr[kr.HDR_STATE]
    d0, d1, d2 = hdr[kr.HDR_DETAIL0], hdr[kr.HDR_DETAIL1], hdr[kr.HDR_DETAIL2]
    where = f"{len(results)} of {len(ops)} operations done"
    if state == kr.ST_ERR_WINDOW_BUSY:
        raise WindowBusy(
            f"[{base:#x}, {base + WINDOW:#x}) is not empty in the runner: {d0:#x}-{d1:#x} is "
            "mapped; choose another base (a 512 GiB-aligned slot with nothing in it)", d0, d1)
    if timed_out:
        raise KernelRunError(f"the script did not finish within {timeout} s; {where}", results)
    if state == kr.ST_ERR_SETUP:
        raise KernelRunError(
            f"runner setup failed while {_SETUP_STEPS.get(d0, d0)}: {os.strerror(d1)}", results)
    if state == kr.ST_ERR_CRASH:
        raise KernelRunError(
            f"runner crashed: signal {d0} at {d1:#x} during operation {_signed(d2)}; {where}", results)
    if state == kr.ST_ERR_CHILD:
        raise KernelRunError(
            f"a script process died (wait status {d0:#x}) after operation {d2}; {where}", results)
    if state != kr.ST_DONE or len(results) != len(ops):
        raise KernelRunError(f"runner ended (wait status {wstatus:#x}) in state {state}; {where}", results)
    for k, b in enumerate(baselines):
        if any(v is None for name, v in b.items() if name in ("VmPTE", "VmRSS")):
            raise KernelRunError(f"no baseline for fork depth {k}", results)
    for r in results:
        # A move to an address the kernel chose lands outside the window, among the
        # runner's own mappings: the counts from there on are not the script's alone.
        if isinstance(r.op, Mremap) and r.ret is not None and not base <= r.ret < base + WINDOW:
            raise KernelRunError(
                f"line {r.op.lineno}: '{r.op}' moved the mapping to {r.ret:#x}, outside the window "
                "(the kernel chose the address); give MREMAP_FIXED and an address in the window",
                results)
    return results


def run(script, base=DEFAULT_BASE, *, timeout=120.0, tmpdir=None):
    """Run ``script`` (text or operations) on the host kernel; one ``Result`` per operation.

    The regular files of ``file`` lines are created, unnamed, on the file system of
    ``tmpdir`` (default: ``tempfile.gettempdir()``); their page cache depends on it (the
    measured scenarios were taken on ext4).

    Returns a ``KernelResults`` list whose ``config`` is ``host_config()`` for the run.
    Raises ``HostUnsupported`` off Linux, ``WindowBusy`` when the window is not empty,
    ``ScriptError`` for an operation that would leave the window, ``KernelRunError`` when
    the runner cannot finish (its ``results`` hold the operations done).
    """
    _check_host()
    ops = _as_ops(script)
    config = host_config()
    results = _run(ops, base, timeout, tmpdir)
    results.config = config
    return results
