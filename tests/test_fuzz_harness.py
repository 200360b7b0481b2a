"""The fuzzer's decoder and runner (fuzz/fuzz_ops.py), without atheris: fixed inputs and
every saved crash input are replayed through the same function the fuzzer calls."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fuzz"))

import fuzz_ops  # noqa: E402
from differential import Divergence, resolve  # noqa: E402

import ptreclaim._reference as ref_impl  # noqa: E402

# A hand-written program: config byte, then mmap (fixed, 1 MiB-ish), a write touch,
# another mmap, then bytes that decode as they come. Plus arbitrary byte soups.
FIXED_INPUTS = [
    b"",
    b"\x00",
    bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 5, 0, 6, 1, 0, 0, 4, 4, 7, 1, 0, 0, 3, 0, 0, 1, 2, 1, 0, 0, 0, 6]),
    bytes(range(256)),
    b"\xff" * 64,
    b"ptreclaim" * 20,
]


@pytest.mark.parametrize("data", FIXED_INPUTS, ids=[f"fixed{i}" for i in range(len(FIXED_INPUTS))])
def test_fixed_inputs_replay_without_divergence(data):
    fuzz_ops.run_one(data)


def test_saved_crash_inputs_replay_without_divergence():
    crash_dir = os.path.join(ROOT, "fuzz", "crashes")
    names = sorted(n for n in os.listdir(crash_dir) if n != "README.md")
    for name in names:
        with open(os.path.join(crash_dir, name), "rb") as f:
            fuzz_ops.run_one(f.read())


def test_decoder_is_deterministic_and_bounded():
    data = bytes(range(256)) * 8
    assert fuzz_ops.decode(data) == fuzz_ops.decode(data)
    config, ops = fuzz_ops.decode(data)
    assert len(ops) == fuzz_ops.MAX_OPS
    assert config["pt_reclaim"] in (True, False, "seed")


def test_decoder_reaches_every_operation():
    # Every opcode, followed by zero bytes for its arguments (the input runs out).
    seen = set()
    for opcode in range(len(fuzz_ops.OPS)):
        _, ops = fuzz_ops.decode(bytes([0, opcode]))
        assert len(ops) == 1
        method, args, kwargs = resolve([], ops[0])
        seen.add(method)
    assert seen == {"mmap", "munmap", "mprotect", "mlock", "munlock", "madvise", "touch"}


def test_a_divergence_is_reported(monkeypatch):
    # The harness must fail when the implementations disagree: make the reference
    # report one page too many of anonymous memory.
    real = ref_impl.MM.status

    def status(self):
        out = real(self)
        out["RssAnon"] += 4
        return out

    monkeypatch.setattr(ref_impl.MM, "status", status)
    with pytest.raises(Divergence, match="status"):
        fuzz_ops.run_one(FIXED_INPUTS[2])
