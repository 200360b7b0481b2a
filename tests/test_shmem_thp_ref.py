"""Shmem huge folios (SC-39, R31, R44) in the reference model: the host-kernel
measurements in tests/data/shmem_thp/, replayed through the script runner.

Each m-X.txt was run on Linux 6.18 (shmem_enabled=never, no swap) with
``python -m ptreclaim run --on kernel``; m-X.out is that output. Every line's errno and
its VmPTE, RssAnon, RssFile, RssShmem and VmSize deltas must match, and check() must hold
in every process of the machine after every operation.
"""

import pathlib
import re

import pytest

from ptreclaim import _reference
from ptreclaim.script import errno_name, run

DATA = pathlib.Path(__file__).parent / "data" / "shmem_thp"
SCRIPTS = sorted(p.stem for p in DATA.glob("m-*.txt"))
FIELDS = ("VmPTE", "RssAnon", "RssFile", "RssShmem", "VmSize")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class Checked:
    """An MM whose every call is followed by check() of all the machine's processes."""

    def __init__(self, mm):
        self._mm = mm

    def __getattr__(self, name):
        attr = getattr(self._mm, name)
        if not callable(attr) or name in ("check", "status"):
            return attr

        def call(*args, **kwargs):
            try:
                ret = attr(*args, **kwargs)
            finally:
                for mm in list(self._mm.machine.mms):
                    mm.check()
            if name == "fork":
                return Checked(ret)
            return ret

        return call


def _addr(text):
    """1M+1020K and the like, as the runner prints them."""
    total = 0
    for term in text.split("+"):
        m = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)([KMG]?)", term)
        assert m, text
        total += int(m.group(1), 0) * _UNITS[m.group(2)]
    return total


def load_expected(name):
    """{line: (errno name, fault offset or None, {field: delta})} from an m-X.out."""
    lines = (DATA / f"{name}.out").read_text().splitlines()
    header = lines[1].split()
    # line, operation, errno, the numeric fields..., depth
    numeric = header[header.index("errno") + 1:]
    out = {}
    for row in lines[2:]:
        tok = row.split()
        if not tok:
            continue
        values = dict(zip(numeric, (int(t) for t in tok[-len(numeric):])))
        err = tok[-len(numeric) - 1]
        err_name, _, where = err.partition("@")
        out[int(tok[0])] = (err_name, where or None, values)
    return out


@pytest.mark.parametrize("name", SCRIPTS)
def test_measured_script(name):
    expected = load_expected(name)
    machine = _reference.Machine()
    mm = _reference.MM(machine=machine)
    base = 0x2000_0000_0000
    results = run((DATA / f"{name}.txt").read_text(), Checked(mm), base=base)
    assert [r.op.lineno for r in results] == sorted(expected)
    for r in results:
        err_name, where, values = expected[r.op.lineno]
        got = {k: r.delta[k] for k in FIELDS if k in values}
        want = {k: values[k] for k in FIELDS if k in values}
        assert (errno_name(r.errno), got, r.depth) == (err_name, want, values["depth"]), \
            f"{name} line {r.op.lineno}: {r.op}"
        if err_name.startswith("SIG"):
            assert r.fault - base == _addr(where)
        elif where is not None:
            assert r.ret - base == _addr(where)


def test_status_shmem_pmd_mapped():
    """ShmemPmdMapped counts the 2 MiB of a PMD-mapped shmem folio, not PTE-mapped ones
    (SC-39: write, COLLAPSE, then a DONTNEED and a read fault map it again by PMD)."""
    results = run("mmap 0 2M rw shared\ntouch 0 2M write\nmadvise 0 2M COLLAPSE\n", mm := _reference.MM())
    assert [r.errno for r in results] == [0, 0, 0]
    assert mm.status()["ShmemPmdMapped"] == 2048
    assert not [t for t in mm.tables() if t[0] == "deposit"]
    mm.madvise(0x2000_0000_0000, 1 << 20, _reference.MADV_DONTNEED)
    assert mm.status()["ShmemPmdMapped"] == 0
    mm.check()
