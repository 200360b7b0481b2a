"""The seed patch's production case at 1/16 scale (bench/scale.py): 1.8 million PTE
tables, 9.7 million resident pages, an allocator releasing with MADV_DONTNEED.
extra_info has VmPTE before and after, the tables reclaimed and the peak host RSS.
PTRECLAIM_SCALE_FRACTION picks another fraction of the production size (default 16)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scale import run_scale  # noqa: E402

FRACTION = int(os.environ.get("PTRECLAIM_SCALE_FRACTION", "16"))


@pytest.mark.parametrize("pt_reclaim", [True, False], ids=["reclaim", "no-reclaim"])
def test_production_scale(benchmark, pt_reclaim):
    benchmark.group = f"scale-1/{FRACTION}"
    result = benchmark.pedantic(lambda: run_scale(pt_reclaim, FRACTION), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    # Every span holds pages before the release, so every span has a table.
    assert result["pte_tables_before"] * 4 <= result["vmpte_before_kb"]
    if pt_reclaim:
        # The whole-chunk releases free their tables; the 1 MiB ones cannot.
        assert result["pte_tables_reclaimed"] > 0.85 * result["pte_tables_before"]
        assert result["vmpte_after_kb"] < result["vmpte_before_kb"] // 5
    else:
        assert result["pte_tables_reclaimed"] == 0
        assert result["vmpte_after_kb"] == result["vmpte_before_kb"]
