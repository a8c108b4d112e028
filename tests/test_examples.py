"""The scripts of ``examples/`` run, and write only into their output directory."""

import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def digests(directory):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in directory.iterdir() if path.is_file()}


def run_example(name, cwd, *args):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["spirals.py", "digits.py", "sentiment_toy.py"])
def test_examples_leave_the_examples_directory_alone(name, tmp_path):
    before = digests(EXAMPLES)
    result = run_example(name, tmp_path)
    assert result.returncode == 0, result.stderr
    assert digests(EXAMPLES) == before
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    if name == "spirals.py" and "matplotlib is not installed" not in result.stdout:
        assert written == [os.path.join("fastmlp-examples-output",
                                        "spirals_decision_boundary.png")]
    else:
        assert written == []


def test_spirals_writes_its_picture_to_out(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_example("spirals.py", tmp_path, "--out", str(tmp_path / "pictures"))
    assert result.returncode == 0, result.stderr
    picture = tmp_path / "pictures" / "spirals_decision_boundary.png"
    assert picture.read_bytes().startswith(b"\x89PNG") and f"wrote {picture}" in result.stdout


def test_dask_digits_trains_on_a_local_cluster_and_writes_nothing(tmp_path):
    for module in ("dask.array", "distributed", "dask_ml", "sklearn"):
        pytest.importorskip(module)
    before = digests(EXAMPLES)
    result = run_example("dask_digits.py", tmp_path, "--passes", "3")
    assert result.returncode == 0, result.stderr
    assert "cluster: 2 workers" in result.stdout
    accuracy = float(result.stdout.split("held-out accuracy ")[1].split()[0])
    assert accuracy > 0.5  # 3 passes; 0.97 after the default 15
    assert digests(EXAMPLES) == before
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
