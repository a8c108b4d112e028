"""Smoke run of out_of_core.py (the measurement itself needs an ~800 MB file and a memory
cgroup: run the script): a 4 MB memory-mapped file, one epoch in memory and one block-shuffled
from the file, each in its own process; the report must come out whole."""

import os

import out_of_core


def bench_out_of_core_smoke(tmp_path):
    results = out_of_core.run(4, 1, 3.0, 0.0, use_cgroup=False, directory=tmp_path)
    for kind in ("memory", "mapped"):
        assert len(results[kind]["samples_per_second"]) == 1
        assert results[kind]["samples_per_second"][0] > 0
    assert results["mapped"]["rows"] == results["memory"]["rows"]
    assert "ratio" in out_of_core.report(results)
    assert os.listdir(tmp_path) == []  # the data files are deleted
