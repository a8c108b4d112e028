"""benchmarks/inference.py runs (one round of the mnist net at batch 1 and 3; with onnxruntime
when it is installed, its exported net agreeing with fastmlp's probabilities)."""

import numpy as np
import pytest

import fastmlp
import inference


def test_inference_benchmark_runs(capsys):
    inference.main(["--rounds", "1", "--nets", "mnist", "--batches", "1,3"])
    out = capsys.readouterr().out
    assert "fastmlp int8 static" in out and "packed vs unpacked fp32" in out


def test_the_onnx_export_computes_the_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = fastmlp.MLP([20, 16, 8, 3], seed=0)
    X = np.random.default_rng(0).random((5, 20), dtype=np.float32)
    sessions = inference.onnx_sessions(model, str(tmp_path))
    np.testing.assert_allclose(sessions["ort fp32"].run(None, {"X": X})[0],
                               model.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sessions["ort int8"].run(None, {"X": X})[0],
                               model.predict_proba(X), atol=0.1)
