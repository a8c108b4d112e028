"""ONNX export (``MLP.to_onnx``, the estimators' ``to_onnx``, ``fastmlp export``): onnxruntime
runs the exported graphs and gives fastmlp's outputs. Skipped without onnx / onnxruntime."""

import csv
import json
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastmlp import MLP, cli, onnx_export  # noqa: E402

ACTIVATIONS = ["relu", "tanh", "logistic", "identity"]
# output -> (n_outputs, the graph's first output)
OUTPUTS = {"softmax": (4, "probabilities"), "sigmoid": (1, "probabilities"),
           "multilabel": (3, "probabilities"), "identity": (2, "predictions"),
           "poisson": (2, "predictions")}
STANDARD_OPS = {"Gemm", "Relu", "Tanh", "Sigmoid", "Softmax", "Sub", "Concat", "Exp",
                "Identity", "Reshape", "Div", "Cast", "Mul", "Add"}
BATCHES = [1, 7, 33]  # one session: the batch dimension is symbolic


def session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])


def run(sess, X):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": X})))


def tolerance(dtype):
    # float32: reductions of a few hundred terms summed in another order; float64: ~1e-15.
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


def model_with_biases(sizes, activation="relu", output="softmax", dtype="float32", seed=0):
    """An MLP whose biases are not zero (a dropped bias would show)."""
    model = MLP(sizes, activation=activation, output=output, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    model.biases = [rng.standard_normal(b.shape) for b in model.biases]
    return model


def expected(model, X):
    """What the graph's first output must equal: predict_proba, or predict for regression."""
    return model.predict_proba(X) if model.is_classifier else model.predict(X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_onnxruntime_gives_fastmlps_outputs(activation, output, dtype):
    n_outputs, main = OUTPUTS[output]
    model = model_with_biases([5, 9, 6, n_outputs], activation, output, dtype)
    sess = session(model.to_onnx())
    assert [o.name for o in sess.get_outputs()] == [main, "logits"]
    rng = np.random.default_rng(2)
    for n in BATCHES:
        X = rng.standard_normal((n, 5)).astype(dtype)
        got = run(sess, X)
        assert got[main].dtype == model.dtype and got["logits"].dtype == model.dtype
        np.testing.assert_allclose(got[main], expected(model, X), **tolerance(model.dtype))
        np.testing.assert_allclose(got["logits"], model.forward(X), **tolerance(model.dtype))


def test_the_graph_is_standard_onnx_with_a_symbolic_batch():
    model = model_with_biases([6, 8, 8, 3], "tanh")
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    assert ops == ["Gemm", "Tanh", "Gemm", "Tanh", "Gemm", "Softmax"]
    assert set(ops) <= STANDARD_OPS
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", onnx_export.OPSET)]
    (x,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 6]
    # W is stored as fastmlp holds it, (out, in), and Gemm transposes it (transB=1).
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        np.testing.assert_array_equal(weights[f"W{i}"], w)
        np.testing.assert_array_equal(weights[f"b{i}"], b)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["activation"] == "tanh" and props["output"] == "softmax"
    assert json.loads(props["layer_sizes"]) == [6, 8, 8, 3]


def test_an_identity_hidden_activation_adds_no_node():
    proto = model_with_biases([4, 5, 3], "identity").to_onnx()
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Gemm", "Softmax"]


def test_a_wide_float32_net_within_1e_5():
    model = model_with_biases([784, 512, 512, 10], "relu")
    X = np.random.default_rng(3).random((65, 784), dtype=np.float32)
    got = run(session(model.to_onnx()), X)
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["logits"], model.forward(X), rtol=1e-5, atol=1e-5)


def test_a_bfloat16_precision_model_exports_its_float32_network():
    model = model_with_biases([20, 16, 3])
    X = np.random.default_rng(4).standard_normal((9, 20)).astype(np.float32)
    float32_logits = model.forward(X)
    model.precision = "bfloat16"
    got = run(session(model.to_onnx()), X)
    np.testing.assert_allclose(got["logits"], float32_logits, rtol=1e-5, atol=1e-5)
    assert model.precision == "bfloat16"


def test_to_onnx_writes_the_file_atomically(tmp_path):
    model = model_with_biases([5, 7, 2], "logistic")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older file")
    returned = model.to_onnx(path)
    assert path.read_bytes() == returned.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary left behind
    X = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run(sess, X)["probabilities"], model.predict_proba(X),
                               rtol=1e-5, atol=1e-5)
    model.to_onnx(str(path))  # a str as well as a PathLike
    assert onnx.load(str(path)).graph.node[0].op_type == "Gemm"


def test_a_model_loaded_from_npz(tmp_path):
    original = model_with_biases([5, 8, 3], "tanh", dtype="float64")
    original.save(tmp_path / "m.npz")
    model = MLP.load(tmp_path / "m.npz")
    X = np.random.default_rng(6).standard_normal((11, 5))
    got = run(session(model.to_onnx()), X)
    np.testing.assert_allclose(got["probabilities"], original.predict_proba(X), rtol=1e-12,
                               atol=1e-12)


def test_bad_paths_are_refused_before_anything_is_written(tmp_path):
    model = model_with_biases([3, 2])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.to_onnx(tmp_path / "missing" / "model.onnx")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.to_onnx(tmp_path)
    with pytest.raises(TypeError):
        model.to_onnx(3)
    assert os.listdir(tmp_path) == []


def test_a_model_beyond_one_onnx_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_export, "_MAX_PARAMETER_BYTES", 100)
    with pytest.raises(ValueError, match="2 GiB"):
        model_with_biases([10, 10, 2]).to_onnx(tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_without_onnx_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"fastmlp\[onnx\]"):
        model_with_biases([3, 2]).to_onnx()


# ---- the estimators ---------------------------------------------------------------------------

def fitted(estimator, X, y):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("labels", ["binary_strings", "three_ints", "one_class", "multilabel"])
def test_classifier_graph_gives_predict_proba_in_classes_order(labels, dtype):
    pytest.importorskip("sklearn")
    from fastmlp import MLPClassifier
    rng = np.random.default_rng(7)
    X = rng.standard_normal((80, 4))
    y = {"binary_strings": np.where(X[:, 0] > 0, "yes", "no"),
         "three_ints": np.array([3, 5, 9])[np.arange(80) % 3],
         "one_class": np.full(80, "only"),
         "multilabel": (X[:, :3] > 0).astype(int)}[labels]
    clf = fitted(MLPClassifier((8,), activation="tanh", max_iter=20, random_state=0,
                               dtype=dtype), X, y)
    proto = clf.to_onnx()
    got = run(session(proto), X.astype(dtype))
    np.testing.assert_allclose(got["probabilities"], clf.predict_proba(X.astype(dtype)),
                               **tolerance(np.dtype(dtype)))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == clf.classes_.tolist()
    if labels != "multilabel" and labels != "one_class":
        labels_from_graph = clf.classes_[np.argmax(got["probabilities"], axis=1)]
        np.testing.assert_array_equal(labels_from_graph, clf.predict(X))


@pytest.mark.parametrize("loss, n_targets", [("squared_error", 1), ("squared_error", 2),
                                             ("poisson", 1)])
def test_regressor_graph_gives_predict(loss, n_targets):
    pytest.importorskip("sklearn")
    from fastmlp import MLPRegressor
    rng = np.random.default_rng(8)
    X = rng.standard_normal((60, 3)).astype(np.float32)
    y = np.abs(X[:, :n_targets] * 2 + 1)
    reg = fitted(MLPRegressor((8,), max_iter=20, random_state=0, loss=loss),
                 X, y[:, 0] if n_targets == 1 else y)
    got = run(session(reg.to_onnx()), X)
    assert got["predictions"].shape == reg.predict(X).shape  # (N,) for one target
    np.testing.assert_allclose(got["predictions"], reg.predict(X), rtol=1e-5, atol=1e-5)


def test_feature_names_of_a_dataframe_are_kept():
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from fastmlp import MLPRegressor
    X = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) ** 0.5})
    reg = fitted(MLPRegressor((4,), max_iter=5, random_state=0), X, np.arange(20.0))
    props = {p.key: p.value for p in reg.to_onnx().metadata_props}
    assert json.loads(props["feature_names"]) == ["a", "b"]


def test_an_unfitted_estimator_cannot_export(tmp_path):
    pytest.importorskip("sklearn")
    from fastmlp import MLPClassifier
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        MLPClassifier().to_onnx(tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# ---- fastmlp export ---------------------------------------------------------------------------

def write_csv(path, X, target, name):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["f0", "f1", "f2", name])
        writer.writerows([*(f"{v:.6f}" for v in row), t] for row, t in zip(X, target))
    return path


@pytest.fixture
def raw_features():
    """Features in units far from standardised: the graph must standardise them."""
    rng = np.random.default_rng(9)
    return rng.standard_normal((60, 3)) * [1.0, 10.0, 1000.0] + [0.0, 5.0, 1e5]


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_a_classifier_with_its_sidecar(tmp_path, capsys, raw_features):
    X = np.round(raw_features, 6)
    data = write_csv(tmp_path / "d.csv", X, np.where(X[:, 0] > 0, "yes", "no"), "label")
    model_path = tmp_path / "m.npz"
    assert cli_run(capsys, "train", data, "--target", "label", "--epochs", "3", "--quiet",
                   "--out", model_path)[0] == 0
    code, out, _ = cli_run(capsys, "export", model_path, tmp_path / "m.onnx")
    assert code == 0 and "m.onnx" in out
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(double)"  # raw features, standardised inside
    from fastmlp._tabular import load_model
    model, meta = load_model(model_path)
    reference = model.predict_proba(meta.scaler.transform(X).astype(np.float32))
    np.testing.assert_allclose(run(sess, X)["probabilities"], reference, rtol=1e-5, atol=1e-5)
    custom = sess.get_modelmeta().custom_metadata_map
    assert json.loads(custom["classes"]) == ["no", "yes"]
    assert json.loads(custom["feature_names"]) == ["f0", "f1", "f2"]

    code, _, _ = cli_run(capsys, "export", model_path, tmp_path / "raw.onnx", "--raw")
    raw = ort.InferenceSession(str(tmp_path / "raw.onnx"), providers=["CPUExecutionProvider"])
    scaled = meta.scaler.transform(X).astype(np.float32)
    np.testing.assert_allclose(run(raw, scaled)["probabilities"], reference, rtol=1e-5,
                               atol=1e-5)


def test_export_a_regression_model_predicts_in_the_targets_units(tmp_path, capsys,
                                                                  raw_features):
    X = np.round(raw_features, 6)
    data = write_csv(tmp_path / "r.csv", X, X[:, 1] * 3.5 + 200.0, "t")
    model_path = tmp_path / "r.npz"
    assert cli_run(capsys, "train", data, "--target", "t", "--task", "regression", "--epochs",
                   "3", "--quiet", "--out", model_path)[0] == 0
    assert cli_run(capsys, "export", model_path, tmp_path / "r.onnx")[0] == 0
    sess = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    code, out, _ = cli_run(capsys, "predict", model_path, data)
    assert code == 0
    printed = np.array([float(v) for v in out.split()])
    np.testing.assert_allclose(run(sess, X)["predictions"][:, 0], printed, rtol=1e-12)


def test_export_a_model_without_sidecar(tmp_path, capsys):
    model = model_with_biases([4, 6, 3])
    model.save(tmp_path / "plain.npz")
    assert cli_run(capsys, "export", tmp_path / "plain.npz", tmp_path / "plain.onnx")[0] == 0
    X = np.random.default_rng(10).standard_normal((5, 4)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run(sess, X)["probabilities"], model.predict_proba(X),
                               rtol=1e-5, atol=1e-5)


def test_export_errors_are_one_line_and_leave_files_alone(tmp_path, capsys, monkeypatch):
    model_path = tmp_path / "m.npz"
    model_with_biases([4, 3]).save(model_path)
    saved = model_path.read_bytes()

    def error(*argv):
        code, _, err = cli_run(capsys, "export", *argv)
        assert code == 1 and err.startswith("fastmlp: error: ") and err.count("\n") == 1, err
        return err

    assert "is the model file itself" in error(model_path, model_path)
    assert "no such model file" in error(tmp_path / "nope.npz", tmp_path / "x.onnx")
    assert "does not exist" in error(model_path, tmp_path / "no" / "x.onnx")
    assert "is a directory" in error(model_path, tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    assert "junk.npz" in error(tmp_path / "junk.npz", tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert "fastmlp[onnx]" in error(model_path, tmp_path / "x.onnx")
    assert model_path.read_bytes() == saved
    assert sorted(os.listdir(tmp_path)) == ["junk.npz", "m.npz"]


def test_export_refuses_to_overwrite_the_model_s_sidecar(tmp_path, capsys, raw_features):
    """`fastmlp export m.npz m.npz.meta.json` wrote the ONNX graph over the sidecar: the class
    labels and the scaling `fastmlp predict` needs were lost."""
    X = np.round(raw_features, 6)
    data = write_csv(tmp_path / "d.csv", X, np.where(X[:, 0] > 0, "yes", "no"), "label")
    model_path = tmp_path / "m.npz"
    assert cli_run(capsys, "train", data, "--target", "label", "--epochs", "1", "--quiet",
                   "--out", model_path)[0] == 0
    sidecar = tmp_path / "m.npz.meta.json"
    saved = sidecar.read_bytes()
    (tmp_path / "link.json").symlink_to(sidecar)
    for out in (sidecar, tmp_path / "link.json"):
        for raw in ([], ["--raw"]):
            code, _, err = cli_run(capsys, "export", model_path, out, *raw)
            assert code == 1 and "is the model's metadata sidecar" in err, err
    assert sidecar.read_bytes() == saved
    assert cli_run(capsys, "predict", model_path, data)[0] == 0
