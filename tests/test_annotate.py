"""`cython -a` of the hot path: no line of the page-table module, the VMA module, or the
core's per-page and per-VMA C functions touches a Python object (every line scores 0)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ptreclaim"

LINE = re.compile(r'<pre class="cython line score-(\d+)"[^>]*>.*?<span class="">(\d+)</span>: ')

# Functions of _core.pyx that run without the GIL, per page or per VMA.
CORE_NOGIL = ("free_pgtables", "munmap_range", "exit_mmap", "vma_modify_flags",
              "populate_vma_page_range", "mm_populate", "unmapped_area_topdown",
              "get_unmapped_area", "madvise_dontneed_single_vma", "unmap_mapping_range",
              "do_munmap", "do_mprotect", "_mprotect_fixup", "_do_mlock", "do_madvise",
              "_madvise_populate", "_madvise_vma_behavior", "_madvise_guard", "do_touch",
              "_touch_one_fast")


def annotate(module, tmp_path):
    # Generated C and HTML go to tmp_path; the sources stay untouched.
    # The production directives of setup.py (checks off, C division).
    directives = ["-X", "boundscheck=False", "-X", "wraparound=False", "-X", "initializedcheck=False",
                  "-X", "cdivision=True"]
    subprocess.run([sys.executable, "-m", "cython", "-3", "-a", *directives, f"ptreclaim/{module}.pyx",
                    "-o", str(tmp_path / f"{module}.c")], check=True, capture_output=True, cwd=ROOT)
    html = (tmp_path / f"{module}.html").read_text()
    return {int(n): int(score) for score, n in LINE.findall(html)}


def function_lines(source, name):
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(rf"\s*cdef .*\b{re.escape(name)}\(", line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or
                                len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    return range(start + 2, end + 1)       # 1-based, body only


@pytest.mark.parametrize("module", ["_pgtable", "_vma"])
def test_whole_module_is_white(module, tmp_path):
    scores = annotate(module, tmp_path)
    assert scores, "cython -a produced no annotated lines"
    # Line 1 carries the module's own initialisation.
    yellow = sorted(n for n, s in scores.items() if s and n != 1)
    source = (PKG / f"{module}.pyx").read_text().splitlines()
    assert not yellow, [f"{n}: {source[n - 1].strip()}" for n in yellow]


def test_core_nogil_functions_are_white(tmp_path):
    scores = annotate("_core", tmp_path)
    source = (PKG / "_core.pyx").read_text()
    lines = source.splitlines()
    yellow = []
    for name in CORE_NOGIL:
        for n in function_lines(source, name):
            if scores.get(n, 0):
                yellow.append(f"{name} {n}: {lines[n - 1].strip()}")
    assert not yellow, yellow
