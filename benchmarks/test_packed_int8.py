"""benchmarks/packed_int8.py runs: one round of the mnist net at batch 1 and 3 (with the
onnxruntime peers when they are installed)."""

import packed_int8


def test_packed_int8_benchmark_runs(capsys):
    packed_int8.main(["--rounds", "1", "--nets", "mnist", "--batches", "1,3"])
    out = capsys.readouterr().out
    assert "fastmlp int8 static" in out and "packed vs unpacked fp32" in out
    assert "int8 batch-1 latency" in out
