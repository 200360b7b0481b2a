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
    # Every opcode after the two configuration bytes, followed by zero bytes for its
    # arguments (the input runs out).
    seen = set()
    for opcode in range(len(fuzz_ops.OPS)):
        _, ops = fuzz_ops.decode(bytes([0, 0, opcode]))
        assert len(ops) == 1
        op = ops[0]
        if op[0] == "in":
            assert op[1] == 0
            op = op[2]
        if op[0] in ("file", "fork", "exit"):
            seen.add(op[0])
            continue
        method, args, kwargs = resolve([], op, files=True)
        seen.add(method)
    assert seen == {"mmap", "munmap", "mprotect", "mlock", "munlock", "madvise", "touch", "mremap",
                    "file", "close", "fork", "exit"}


def test_decoder_configures_thp_swap_and_paging():
    configs = [fuzz_ops.decode(bytes([0, c2]))[0] for c2 in range(64)]
    assert {c["thp"] for c in configs} == {"madvise", "always", "never"}
    assert {c["swap_pages"] for c in configs} == {0, 300, 4096}
    assert {c["paging_levels"] for c in configs} == {4, 5}


def test_files_forks_and_children_run():
    # file (shmem, 2 MiB), mapped shared at the base, written, collapsed, forked; the child
    # writes and exits. Each op: opcode, then its argument bytes.
    ops = fuzz_ops.OPS
    data = bytes([0, 0,
                  ops.index("file"), 5, 1, 1, 1,
                  ops.index("mmap_file"), 0, 0, 0, 0, 0, 6, 0, 1, 0, 0, 0,
                  ops.index("touch"), 0, 0, 0, 0, 6, 1,
                  ops.index("fork"),
                  ops.index("in"), 1, ops.index("touch"), 0, 0, 0, 0, 6, 1,
                  ops.index("exit"), 0])
    config, decoded = fuzz_ops.decode(data)
    assert [op[0] for op in decoded] == ["file", "mmap_file", "touch", "fork", "in", "exit"]
    assert fuzz_ops.run_one(data) == 6
    # The same steps, checked on the reference alone: the file is mapped and written in
    # both processes.
    from differential import Pair
    pair = Pair(**config)
    for op in decoded[:5]:
        pair.step(op)
    assert [p[1].status()["RssShmem"] for p in pair.procs] == [2048, 2048]


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
