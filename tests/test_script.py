"""Operation scripts: the parser, and run() on the simulator."""

import errno
import importlib
import pathlib
import re

import pytest

from ptreclaim import constants as C
from ptreclaim import script as S

SCENARIOS = pathlib.Path(__file__).parent / "data" / "scenarios"
SCENARIO_FILES = sorted(SCENARIOS.glob("*.txt"))
B = S.DEFAULT_BASE
K, M, G = 1 << 10, 1 << 20, 1 << 30


# --- parser: valid lines ---------------------------------------------------------------------

@pytest.mark.parametrize("line, op", [
    ("mmap 0 4M rw private", S.Mmap(0, 4 * M, C.PROT_READ | C.PROT_WRITE)),
    ("mmap 2M 4K r shared populate locked noreserve fixed",
     S.Mmap(2 * M, 4 * K, C.PROT_READ, shared=True, populate=True, locked=True, noreserve=True, fixed=True)),
    ("mmap 0 4K none private", S.Mmap(0, 4 * K, C.PROT_NONE)),
    ("mmap 0 4K rwx private", S.Mmap(0, 4 * K, 7)),
    ("mmap 0 4K r-x private", S.Mmap(0, 4 * K, C.PROT_READ | C.PROT_EXEC)),
    ("mmap 0 4K 0x1000000 private", S.Mmap(0, 4 * K, C.PROT_GROWSDOWN)),
    ("MMAP 0 4K RW PRIVATE NORESERVE", S.Mmap(0, 4 * K, 3, noreserve=True)),
    ("munmap 2M+4K 1G-4K", S.Munmap(2 * M + 4 * K, G - 4 * K)),
    ("mprotect 0x1000 8192 r", S.Mprotect(4 * K, 8 * K, C.PROT_READ)),
    ("mlock 1_000 (1+1)*2M", S.Mlock(1000, 4 * M)),
    ("munlock -4K 4k", S.Munlock(-4 * K, 4 * K)),
    ("madvise 0 2M DONTNEED", S.Madvise(0, 2 * M, C.MADV_DONTNEED)),
    ("madvise 0 2M MADV_DONTNEED", S.Madvise(0, 2 * M, C.MADV_DONTNEED)),
    ("madvise 0 2M dontneed_locked", S.Madvise(0, 2 * M, C.MADV_DONTNEED_LOCKED)),
    ("madvise 0 0 9999", S.Madvise(0, 0, 9999)),
    ("madvise 0 0 -1", S.Madvise(0, 0, -1)),
    ("madvise 0 0x10 0x4", S.Madvise(0, 16, C.MADV_DONTNEED)),
    ("touch 100K 1 read", S.Touch(100 * K, 1, write=False)),
    ("touch 0 512G w", S.Touch(0, 512 * G, write=True)),
    ("touch 1T 1P write", S.Touch(1 << 40, 1 << 50, write=True)),
    ("fork", S.Fork()),
    ("forkp   # the child idles", S.ForkP()),
    ("file A 64K", S.CreateFile(name="A", size=64 * K)),
    ("FILE data.1 4K+100 RO shmem uncached",
     S.CreateFile(name="data.1", size=4 * K + 100, ro=True, shmem=True, uncached=True)),
    ("file _x 0", S.CreateFile(name="_x", size=0)),
    ("close A", S.Close(name="A")),
    ("mmap 0 16K r shared file=A", S.Mmap(0, 16 * K, C.PROT_READ, shared=True, file="A")),
    ("mmap 0 16K rw private noreserve file=A off=2M+4K",
     S.Mmap(0, 16 * K, 3, noreserve=True, file="A", offset=2 * M + 4 * K)),
    ("mmap 0 4K r shared off=-4K file=A", S.Mmap(0, 4 * K, 1, shared=True, file="A", offset=(1 << 64) - 4 * K)),
])
def test_parse_line(line, op):
    assert S.parse_line(line, 7) == op
    assert S.parse_line(line, 7).lineno == 7


@pytest.mark.parametrize("text, length", [
    ("0xffffffffffffffff", (1 << 64) - 1),
    ("-1", (1 << 64) - 1),           # (size_t)-1
    ("-8K", (1 << 64) - 8 * K),       # wraps: what a C caller passes as (size_t)-8192
    ("-0x8000000000000000", 1 << 63),  # the most negative accepted
])
def test_negative_and_huge_lengths(text, length):
    assert S.parse_line(f"munmap 0 {text}").length == length


def test_parse_skips_blank_and_comment_lines_and_numbers_lines():
    ops = S.parse("# a comment\n\n   \nmmap 0 2M rw private  # trailing\n\t\ntouch 0 2M write\n")
    assert [op.lineno for op in ops] == [4, 6]
    assert ops == [S.Mmap(0, 2 * M, 3), S.Touch(0, 2 * M, write=True)]


def test_file_mmap_flags_have_no_map_anonymous():
    assert S.parse_line("mmap 0 4K r shared file=A").flags == C.MAP_SHARED | C.MAP_FIXED_NOREPLACE
    assert S.parse_line("mmap 0 4K r private fixed file=A").flags == C.MAP_PRIVATE | C.MAP_FIXED


@pytest.mark.parametrize("text, reason", [
    ("mmap 0 4K r shared file=A\n", "line 1: no earlier 'file A ...' line creates 'A'"),
    ("close A\nfile A 4K\n", "line 1: no earlier 'file A ...' line creates 'A'"),
    ("file A 4K\nfile A 8K\n", "line 2: file 'A' is created twice"),
])
def test_file_names_must_be_created_first_and_once(text, reason):
    with pytest.raises(S.ScriptError, match=re.escape(reason)):
        S.parse(text)
    with pytest.raises(S.ScriptError, match=re.escape(reason)):
        S.run([S.parse_line(line, n) for n, line in enumerate(text.splitlines(), 1)], object())


def test_file_lines_round_trip():
    text = ("file A 8K+1 ro\nfile B 1M shmem uncached\nmmap 0 8K r shared file=A off=0x7ffffffffffff000\n"
            "mmap 2M 4K rw private populate file=B\nclose B\n")
    ops = S.parse(text)
    assert S.parse(S.dumps(ops)) == ops


def test_mmap_flags():
    assert S.Mmap(0, 4 * K, 3).flags == C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED_NOREPLACE
    op = S.parse_line("mmap 0 4K rw shared fixed populate locked noreserve")
    assert op.flags == (C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_FIXED | C.MAP_POPULATE | C.MAP_LOCKED
                        | C.MAP_NORESERVE)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_dumps_round_trips(path):
    ops = S.load(path)
    assert ops
    assert S.parse(S.dumps(ops)) == ops


# --- parser: malformed lines -----------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("frobnicate 0 4K", "unknown operation 'frobnicate'"),
    ("mmap 0 4K rw", "mmap needs ADDR LEN PROT KIND"),
    ("mmap 0 4K rw anon", "bad KIND 'anon'"),
    ("mmap 0 4K rw private hugetlb", "unknown mmap flag 'hugetlb'"),
    ("mmap 0 4K rw private populate populate", "given twice"),
    ("mmap 0 4K rq private", "bad PROT 'rq'"),
    ("mmap 0 4K rr private", "bad PROT 'rr'"),
    ("mmap 0 4K 0x80000000 private", "does not fit a C int"),
    ("mmap 0 4KB rw private", "bad LEN '4KB'"),
    ("munmap 0", "munmap needs ADDR LEN"),
    ("munmap 0 4K 4K", "munmap needs ADDR LEN"),
    ("munmap zero 4K", "bad ADDR 'zero'"),
    ("munmap 2M+ 4K", "bad ADDR '2M+'"),
    ("munmap (2M 4K", "missing ')'"),
    ("munmap 2M) 4K", "unexpected ')'"),
    ("munmap 0x 4K", "bad ADDR '0x'"),
    ("munmap 1__0 4K", "bad number"),
    ("munmap 0 0x10000000000000000", "LEN '0x10000000000000000' is out of range"),
    ("munmap 0 -0x8000000000000001", "is out of range"),
    ("munmap 0x10000000000000000 4K", "ADDR '0x10000000000000000' is out of range"),
    ("mprotect 0 4K", "mprotect needs ADDR LEN PROT"),
    ("mprotect 0 4K rwz", "bad PROT 'rwz'"),
    ("madvise 0 4K", "madvise needs ADDR LEN ADVICE"),
    ("madvise 0 4K DONTWANT", "unknown ADVICE 'DONTWANT'"),
    ("madvise 0 4K 0x100000000", "does not fit a C int"),
    ("madvise 0 4K 12abc", "bad ADVICE '12abc'"),
    ("touch 0 4K", "touch needs ADDR LEN read|write"),
    ("touch 0 4K execute", "bad touch mode 'execute'"),
    ("fork now", "fork takes no arguments"),
    ("forkp 1", "forkp takes no arguments"),
    ("file", "file needs NAME SIZE"),
    ("file F", "file needs NAME SIZE"),
    ("file 9F 4K", "bad file NAME '9F'"),
    ("file F -1", "SIZE '-1' is out of range"),
    ("file F 4K rw", "unknown file flag 'rw'"),
    ("file F 4K ro ro", "file flag 'ro' given twice"),
    ("close", "close needs NAME"),
    ("close F G", "close needs NAME"),
    ("mmap 0 4K r shared file=", "bad file NAME ''"),
    ("mmap 0 4K r shared file=F file=F", "file= given twice"),
    ("mmap 0 4K r shared fd=3", "unknown mmap argument 'fd=3'"),
    ("mmap 0 4K r shared off=4K", "off= needs file=NAME"),
    ("mmap 0 4K r shared file=F off=4Q", "bad OFFSET '4Q'"),
    ("mmap 0 4K r shared file=F off=0x10000000000000000", "OFFSET '0x10000000000000000' is out of range"),
])
def test_malformed_line_names_line_and_reason(line, reason):
    text = f"# header\nmmap 0 2M rw private\n\n{line}\ntouch 0 1 write\n"
    with pytest.raises(S.ScriptError) as info:
        S.parse(text, filename="t.txt")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.lineno == 4
    assert reason in err.reason
    assert str(err).startswith("t.txt, line 4: ")


def test_error_without_filename():
    with pytest.raises(S.ScriptError, match=r"^line 1: unknown operation"):
        S.parse("nope\n")


# --- run() on the simulator ------------------------------------------------------------------

EXPECT = re.compile(r"#\s*expect\s+(.*)$")


def expectations(path):
    """Per operation: the '# expect KEY=VALUE ...' of its line (None if it has none)."""
    out = []
    for line in path.read_text().splitlines():
        if S.parse_line(line) is not None:
            m = EXPECT.search(line)
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split()) if m else None)
    return out


def check_expectations(results, exp):
    """Each result against its line's expected errno and step deltas (kB)."""
    prev = dict.fromkeys(S.FIELDS, 0)
    for r, e in zip(results, exp, strict=True):
        d = r.delta
        step = {k: d[k] - prev[k] for k in S.FIELDS}
        prev = d
        if e is None:
            continue
        got = {k: (S.errno_name(r.errno) if k == "errno" else step[k]) for k in e}
        want = {k: (v if k == "errno" else int(v)) for k, v in e.items()}
        assert got == want, f"line {r.op.lineno}: {r.op}"


@pytest.fixture(params=["core", "reference"])
def MM(request):
    """Each implementation, imported directly: a missing build fails loudly."""
    return importlib.import_module(f"ptreclaim._{request.param}").MM


def test_run_result_shape(MM):
    mm = MM(pt_reclaim=True, thp="madvise")
    res = S.run("mmap 0 2M rw private noreserve\ntouch 0 2M write\nmunmap 0 0\n", mm)
    assert [type(r) for r in res] == [S.Result] * 3
    for r in res:
        assert set(r.status) == set(S.FIELDS) == set(r.baseline) == set(r.delta)
        assert r.depth == 0
    assert res[0].ret == B and res[0].errno == 0
    assert res[1].delta["RssAnon"] == 2048 and res[1].delta["VmPTE"] == 12
    assert res[2].errno == errno.EINVAL and res[2].ret is None
    assert res[0].baseline == mm_status(MM(pt_reclaim=True, thp="madvise"))


def mm_status(mm):
    st = mm.status()
    return {k: st[k] for k in S.FIELDS}


def test_run_reports_segfault_address(MM):
    mm = MM(pt_reclaim=True, thp="madvise")
    res = S.run("mmap 0 8K rw private\nmprotect 4K 4K none\ntouch 0 8K write\ntouch 6K 1 read\n", mm)
    assert res[2].errno == S.SIGSEGV_ERRNO == -11
    assert res[2].fault == B + 4 * K
    assert res[2].delta["RssAnon"] == 4        # the page before the fault was written
    assert res[3].fault == B + 6 * K           # the access: ADDR itself in the first page


def test_run_rejects_touch_past_the_address_space(MM):
    with pytest.raises(S.ScriptError, match="line 1: .* runs past the end"):
        S.run("touch 0 -4K read\n", MM(pt_reclaim=True, thp="madvise"))


def test_run_takes_a_base(MM):
    base = 0x3000_0000_0000
    res = S.run([S.Mmap(2 * M, 2 * M, 3)], MM(pt_reclaim=True, thp="madvise"), base=base)
    assert res[0].ret == base + 2 * M


def test_run_rejects_address_outside_64_bits(MM):
    with pytest.raises(S.ScriptError, match="line 1: .* is not a 64-bit address"):
        S.run("munmap -0x300000000000 4K\n", MM(pt_reclaim=True, thp="madvise"))


def test_fork_needs_simulator_fork(MM):
    mm = MM(pt_reclaim=True, thp="madvise")
    if hasattr(MM, "fork"):
        assert [r.errno for r in S.run("mmap 0 4K rw private\nfork\n", mm)] == [0, 0]
        return
    with pytest.raises(S.ForkUnsupported, match="line 2: 'fork' needs fork()"):
        S.run("mmap 0 4K rw private\nfork\n", mm)
    assert mm.status()["VmSize"] == 0  # refused before anything ran


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_on_simulator(MM, path):
    """The measured scenarios (linux-mm-semantics §14), in the simulator configured as the
    lab machine (§0.1: PT reclaim on, THP madvise)."""
    ops = S.load(path)
    if any(isinstance(op, (S.Fork, S.ForkP)) for op in ops) and not hasattr(MM, "fork"):
        pytest.xfail(f"{path.name} waits for fork() in the simulator")
    check_expectations(S.run(ops, MM(pt_reclaim=True, thp="madvise")), expectations(path))


# --- file lines on the simulator (through the Machine.create_file / MM.open API) -------------

class _FakeMachine:
    def __init__(self):
        self.created = []

    def create_file(self, size, *, shmem=False, cached=True):
        self.created.append((size, shmem, cached))
        return ("file", len(self.created))


class _FakeMM:
    """Records the calls run() makes; descriptors as Linux numbers them (lowest free >= 3)."""

    def __init__(self, machine=None, fds=None, log=None):
        self.machine = machine or _FakeMachine()
        self.fds = dict(fds or {})
        self.log = log if log is not None else []

    def status(self):
        return dict.fromkeys(S.FIELDS, 0)

    def open(self, f, write=True):
        fd = min(set(range(3, 3 + len(self.fds) + 1)) - set(self.fds))
        self.fds[fd] = (f, write)
        self.log.append(("open", f, write, fd))
        return fd

    def close(self, fd):
        if fd not in self.fds:
            raise OSError(errno.EBADF, "close")
        del self.fds[fd]
        self.log.append(("close", fd))

    def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
        self.log.append(("mmap", addr - B, flags, fd, offset))
        if not flags & C.MAP_ANONYMOUS and fd not in self.fds:
            raise OSError(errno.EBADF, "mmap")
        return addr

    def fork(self):
        return _FakeMM(self.machine, self.fds, self.log)


def test_run_file_lines_call_the_file_api():
    mm = _FakeMM()
    res = S.run("file A 8K ro\nfile B 4K shmem uncached\nmmap 0 8K r shared file=A off=4K\n"
                "close A\nmmap 2M 4K r private file=A\nclose A\nfork\nmmap 4M 4K rw shared file=B\n"
                "close B\nfile C 4K\nmmap 6M 4K r private file=C\n", mm)
    assert [S.errno_name(r.errno) for r in res] == [
        "0", "0", "0", "0", "EBADF", "EBADF", "0", "0", "0", "0", "0"]
    assert mm.machine.created == [(8 * K, False, True), (4 * K, True, False), (4 * K, False, True)]
    log = [e for e in mm.log]
    assert log[:4] == [("open", ("file", 1), False, 3), ("open", ("file", 2), True, 4),
                       ("mmap", 0, C.MAP_SHARED | C.MAP_FIXED_NOREPLACE, 3, 4 * K), ("close", 3)]
    # A closed name passes -1 (never a number a newer file may have taken).
    assert log[4] == ("mmap", 2 * M, C.MAP_PRIVATE | C.MAP_FIXED_NOREPLACE, -1, 0)
    # After fork the child uses the same numbers (the descriptor table is copied).
    assert log[5] == ("mmap", 4 * M, C.MAP_SHARED | C.MAP_FIXED_NOREPLACE, 4, 0)
    assert log[6:] == [("close", 4), ("open", ("file", 3), True, 3),
                       ("mmap", 6 * M, C.MAP_PRIVATE | C.MAP_FIXED_NOREPLACE, 3, 0)]


def test_run_file_lines_need_create_file(MM):
    """An MM-like object without files is refused before anything runs."""
    mm = MM(pt_reclaim=True, thp="madvise")
    if hasattr(mm.machine, "create_file"):
        assert [r.errno for r in S.run("mmap 0 4K rw private\nfile A 4K\n", mm)] == [0, 0]
        return
    with pytest.raises(S.FilesUnsupported, match=r"line 2: 'file A 4K' needs machine.create_file"):
        S.run("mmap 0 4K rw private\nfile A 4K\n", mm)
    assert mm.status()["VmSize"] == 0  # refused before anything ran
