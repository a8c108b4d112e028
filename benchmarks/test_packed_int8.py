"""benchmarks/packed_int8.py runs: one round of the mnist net at batch 1 and 3 (with the
onnxruntime peers when they are installed)."""

import packed_int8


def test_packed_int8_benchmark_runs(capsys):
    packed_int8.main(["--rounds", "1", "--nets", "mnist", "--batches", "1,3"])
    out = capsys.readouterr().out
    assert "fastmlp int8 static" in out and "packed vs unpacked fp32" in out
    assert "int8 batch-1 latency" in out


def test_the_targets_are_printed_when_measured(capsys):
    packed_int8.print_targets({("mnist", 1): {"fastmlp fp32": 1.0, "ort fp32": 2.0},
                               ("mnist", 256): {"fastmlp int8 dynamic": 2.0, "ort int8": 2.2}})
    out = capsys.readouterr().out
    assert "batch   1: fastmlp fp32 vs ort fp32: 2.00x (target >= 1.5: met)" in out
    assert "batch 256: fastmlp int8 dynamic vs ort int8: 1.10x (target >= 1.2: NOT met)" in out
    assert "static" not in out  # not measured, not printed
    packed_int8.print_targets({("wide", 1): {"fastmlp fp32": 1.0, "ort fp32": 2.0}})
    assert capsys.readouterr().out == ""
