"""The fuzzer runs for a bounded time on every test run (about a minute; set
PTRECLAIM_FUZZ_SECONDS for longer): any disagreement between the core and the
reference, or a crash of the core, fails this test with the input that caused it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("PTRECLAIM_FUZZ_SECONDS", "60"))

pytestmark = pytest.mark.slow


def test_fuzz_for_a_bounded_time(tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris (libFuzzer for Python) is not installed on this host")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_ops.py"), f"-max_total_time={SECONDS}",
         "-max_len=512", "-rss_limit_mb=4096", "-print_final_stats=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 300)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (
        f"the fuzzer found a problem (inputs saved as {crashes}; replay with "
        f"python fuzz/fuzz_ops.py --replay FILE):\n{proc.stderr[-4000:]}")
    runs = [line for line in proc.stderr.splitlines() if "stat::number_of_executed_units" in line]
    assert runs and int(runs[-1].split(":")[-1]) > 0
