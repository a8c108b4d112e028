"""The command line and the main job (`fastmlp demo`), and the bundled data set."""

import io
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp import cli
from fastmlp.datasets import load_digits


def test_bundled_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert X.min() == 0 and X.max() == 16
    np.testing.assert_array_equal(np.bincount(y) > 170, True)


def test_demo_reaches_95_percent_and_reports_progress():
    out = io.StringIO()
    accuracy = cli.run_demo(out=out)
    text = out.getvalue()
    assert accuracy >= 0.95
    assert text.count("epoch ") == 30 and "samples/s" in text and "val_accuracy" in text
    assert f"test accuracy {accuracy:.4f}" in text


def test_demo_tests_on_images_it_neither_trains_nor_validates_on(monkeypatch):
    seen = {}

    def fit(model, X, y, validation_data, **kwargs):
        seen["train"], seen["validation"] = X, validation_data[0]

    def score(model, X, y):
        seen["test"] = X
        return 1.0

    monkeypatch.setattr(fastmlp.MLP, "fit", fit)
    monkeypatch.setattr(fastmlp.MLP, "score", score)
    cli.run_demo(out=io.StringIO())
    rows = {name: {tuple(row) for row in X} for name, X in seen.items()}  # digits: no duplicates
    X, _ = load_digits()
    assert len(seen["test"]) == 355 and len(seen["validation"]) == 285
    assert len(seen["train"]) + 285 + 355 == len(X)
    assert not rows["test"] & (rows["train"] | rows["validation"])


def test_python_dash_m_runs_the_demo():
    result = subprocess.run([sys.executable, "-m", "fastmlp", "demo", "--epochs", "2"],
                            capture_output=True, text=True, timeout=120)
    assert "epoch   2/2" in result.stdout, result.stderr
    # 2 epochs are not enough for the 0.95 bar: the exit status says so
    assert result.returncode in (0, 1)


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--hidden", "a,b"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
