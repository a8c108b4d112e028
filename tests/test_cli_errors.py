"""The command line on hostile input, through its entry point: values beyond float32 and
features of any finite scale, absurd sizes and seeds, labels that are complex or integers
beyond 2**53, regression models, malformed sidecars, and a model file never left without its
sidecar. Each case gives a correct result or one line on stderr and a non-zero exit."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

from fastmlp import MLP, cli
from fastmlp import _tabular


def run(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and "error: " in lines[-1], err
    return lines[-1]


def blobs(n=150, seed=0, features=3):
    """X (n, features) in three separable clusters, labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) % 3
    centres = rng.normal(scale=5.0, size=(3, features))
    return centres[k] + rng.normal(size=(n, features)), k


def train(capsys, tmp_path, data, *extra, out="model.npz"):
    model = tmp_path / out
    code, stdout, err = run(capsys, "train", data, "--hidden", "16", "--epochs", "30",
                            "--lr", "0.01", "--quiet", "--out", model, *extra)
    return code, model, err


def no_files(tmp_path, name="model.npz"):
    return not (tmp_path / name).exists() and not (tmp_path / (name + ".meta.json")).exists() \
        and not [p for p in os.listdir(tmp_path) if p.startswith(".fastmlp-")]


# ---- features of any finite scale ----------------------------------------------------------


@pytest.mark.parametrize("scale", [1e39, 1e200, 1e307])
def test_features_of_any_finite_scale_train_and_predict(tmp_path, capsys, scale):
    """A column of magnitude 1e200 made Σx² overflow: std = inf, the column silently zeroed
    and `Infinity` written to the sidecar. Now the scaling is finite and the column used."""
    X, y = blobs()
    noise = np.random.default_rng(1).normal(size=(len(y), 3))
    X = noise  # columns 1, 2: noise; column 0 alone tells the classes apart
    X[:, 0] = (y * 8.0 + noise[:, 0]) / 32 * scale
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz", "--val-split", "0")
    assert code == 0, err
    text = (tmp_path / "model.npz.meta.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    meta = json.loads(text)
    assert np.isfinite(meta["feature_std"]).all() and np.isfinite(meta["feature_mean"]).all()
    code, out, err = run(capsys, "evaluate", model, tmp_path / "data.npz")
    assert code == 0, err
    assert float(out.split()[1]) > 0.95  # accuracy
    code, out, err = run(capsys, "predict", model, tmp_path / "data.npz")
    assert code == 0 and len(out.split()) == len(y)


def test_standardizer_is_exactly_the_plain_one_where_that_is_finite():
    X = np.random.default_rng(0).normal(loc=3.0, scale=[1e-3, 1.0, 1e5], size=(50, 3))
    scaler = _tabular.Standardizer.fit(X)
    np.testing.assert_array_equal(scaler.mean, X.mean(axis=0))
    np.testing.assert_array_equal(scaler.std, X.std(axis=0))
    np.testing.assert_array_equal(scaler.transform(X), (X - X.mean(axis=0)) / X.std(axis=0))
    largest = np.finfo(np.float64).max
    extreme = np.array([[largest, -largest, 5.0], [-largest, largest, 5.0]])
    scaler = _tabular.Standardizer.fit(extreme)
    assert np.isfinite(scaler.mean).all() and np.isfinite(scaler.std).all()
    np.testing.assert_allclose(scaler.transform(extreme), [[1, -1, 0], [-1, 1, 0]])


def test_values_beyond_float32_after_scaling_are_a_one_line_error(tmp_path, capsys):
    X, y = blobs()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 0, err
    far = X.copy()
    far[4, 2] = 1e300  # finite, but scaled far beyond float32
    np.savez(tmp_path / "far.npz", X=far, y=y)
    for command in ("predict", "evaluate"):
        code, _, err = run(capsys, command, model, tmp_path / "far.npz")
        assert code == 1
        assert "row 5, feature column 2: 1e+300 is too far from the training data" \
            in one_line_error(err)
    # without a sidecar the features go to the model as they are
    MLP([3, 4, 3], seed=0).save(tmp_path / "plain.npz")
    code, _, err = run(capsys, "predict", tmp_path / "plain.npz", tmp_path / "far.npz")
    assert code == 1 and "beyond the float32 range" in one_line_error(err)
    # in training, a held-out (validation) row far from the training rows
    held_out = np.flatnonzero(cli._stratified_holdout(y, 0.2, 0))[3]
    X[held_out, 2] = 1e300
    np.savez(tmp_path / "outlier.npz", X=X, y=y)
    code, _, err = train(capsys, tmp_path, tmp_path / "outlier.npz", out="o.npz")
    assert code == 1
    assert f"row {held_out + 1}, feature column 2: 1e+300 is too far" in one_line_error(err)
    assert no_files(tmp_path, "o.npz")


def test_features_that_overflow_the_csv_reader_are_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("a,b,label\n1,2,x\n1e999,4,y\n3,4,x\n")
    code, model, err = train(capsys, tmp_path, data, "--target", "label")
    assert code == 1 and "line 3: column 'a' has '1e999'" in one_line_error(err)
    assert no_files(tmp_path)


def test_longdouble_features_beyond_float64_are_a_one_line_error(tmp_path, capsys):
    X, y = blobs(30)
    X = X.astype(np.longdouble)
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is double on this platform")
    X[7, 1] = np.longdouble(np.finfo(np.float64).max) * 4
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, _, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 1
    assert "X holds values beyond the float64 range (first in row 7, column 1)" \
        in one_line_error(err)


# ---- sizes and seeds -----------------------------------------------------------------------


@pytest.mark.parametrize("hidden", ["100000000000", "16,100000000000", str(10**30),
                                    "4294967296,4294967296"])
def test_absurd_hidden_sizes_are_a_one_line_error(tmp_path, capsys, hidden):
    X, y = blobs(30)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, _, err = run(capsys, "train", tmp_path / "data.npz", "--hidden", hidden,
                       "--out", tmp_path / "model.npz")
    assert code == 1
    assert "parameters" in one_line_error(err)
    assert no_files(tmp_path)


def test_absurd_hidden_sizes_in_the_demo_are_a_one_line_error(capsys):
    code, _, err = run(capsys, "demo", "--hidden", "100000000000")
    assert code == 1 and "parameters" in one_line_error(err)


@pytest.mark.parametrize("argv", [["train", "DATA", "--seed", "-1"],
                                  ["train", "DATA", "--seed", "1.5"],
                                  ["train", "DATA", "--hidden", "1e11"],
                                  ["demo", "--seed", "-1"]])
def test_bad_seeds_and_sizes_are_usage_errors(tmp_path, capsys, argv):
    X, y = blobs(30)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    argv = [tmp_path / "data.npz" if a == "DATA" else a for a in argv]
    code, _, err = run(capsys, *argv, *(["--out", tmp_path / "m.npz"] if argv[0] == "train"
                                        else []))
    assert code == 2
    one_line_error(err)
    assert no_files(tmp_path, "m.npz")


def test_a_large_seed_is_accepted(tmp_path, capsys):
    X, y = blobs(30)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, _, err = train(capsys, tmp_path, tmp_path / "data.npz", "--seed", str(2**64 + 1))
    assert code == 0, err


# ---- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.complex128, "datetime64[s]", "timedelta64[s]"])
def test_labels_of_other_kinds_leave_no_files(tmp_path, capsys, dtype):
    X, y = blobs(30)
    np.savez(tmp_path / "data.npz", X=X, y=y.astype(dtype))
    code, _, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 1
    assert f"y must hold class labels (integers, strings or bools), got dtype" \
        in one_line_error(err)
    assert no_files(tmp_path)


@pytest.mark.parametrize("kind", ["npz", "csv"])
def test_integer_labels_beyond_2_53_stay_distinct_and_exact(tmp_path, capsys, kind):
    big = [9007199254740992, 9007199254740993, 2**63 - 1]
    X, k = blobs(90)
    labels = np.array(big, dtype=np.int64)[k]
    if kind == "npz":
        data = tmp_path / "data.npz"
        np.savez(data, X=X, y=labels)
        extra = []
    else:
        data = tmp_path / "data.csv"
        rows = ["a,b,c,label"] + [f"{a!r},{b!r},{c!r},{label}" for (a, b, c), label
                                  in zip(X.tolist(), labels.tolist())]
        data.write_text("\n".join(rows) + "\n")
        extra = ["--target", "label"]
    code, model, err = train(capsys, tmp_path, data, *extra)
    assert code == 0, err
    classes = json.loads((tmp_path / "model.npz.meta.json").read_text())["classes"]
    assert [int(c) for c in classes] == big  # three classes, exact, in numeric order
    code, out, err = run(capsys, "predict", model, data)
    assert code == 0, err
    assert {int(v) for v in out.split()} <= set(big)
    predicted = np.array([int(v) for v in out.split()])
    assert (predicted == labels).mean() > 0.9
    code, out, err = run(capsys, "evaluate", model, data)
    assert code == 0 and float(out.split()[1]) > 0.9


def test_label_keys_are_exact():
    key = _tabular._label_key
    assert key(9007199254740993) != key(9007199254740992)
    assert key("9007199254740993") != key("9007199254740992")
    assert key("9007199254740993") == key(np.int64(9007199254740993))
    assert key("1") == key("1.0") == key(1) == key(1.0) == key(np.uint8(1))
    assert key(True) != key(1) and key("nan") == ("s", "nan")
    classes, y = _tabular.encode_labels(np.array(["10", "9", "1e1", "2.0"]), "test")
    assert classes == ["2.0", "9", "10"] and y.tolist() == [2, 1, 2, 0]


# ---- regression models ---------------------------------------------------------------------


def test_evaluating_and_predicting_with_a_regression_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    t = X[:, 0] - 2 * X[:, 1]
    np.savez(tmp_path / "reg.npz", X=X, y=t)
    model = MLP([2, 16, 1], output="identity", dtype="float64", seed=0)
    model.fit(X, t, epochs=100, seed=0)
    model.save(tmp_path / "reg_model.npz")
    code, out, err = run(capsys, "evaluate", tmp_path / "reg_model.npz", tmp_path / "reg.npz")
    assert code == 0, err
    assert out.startswith("r2 ") and float(out.split()[1]) == pytest.approx(model.score(X, t), abs=1e-4)
    code, out, err = run(capsys, "predict", tmp_path / "reg_model.npz", tmp_path / "reg.npz")
    assert code == 0, err
    np.testing.assert_allclose([float(v) for v in out.split()], model.predict(X)[:, 0])
    two = MLP([2, 4, 2], output="identity", seed=0)
    two.save(tmp_path / "two.npz")
    code, out, err = run(capsys, "predict", tmp_path / "two.npz", tmp_path / "reg.npz",
                         "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "prediction_0,prediction_1"
    code, _, err = run(capsys, "evaluate", tmp_path / "two.npz", tmp_path / "reg.npz")
    assert code == 1 and "y must have shape (200, 2)" in one_line_error(err)
    np.savez(tmp_path / "text.npz", X=X, y=np.array(["a", "b"] * 100))
    code, _, err = run(capsys, "evaluate", tmp_path / "reg_model.npz", tmp_path / "text.npz")
    assert code == 1 and "needs numeric targets" in one_line_error(err)


# ---- sidecars ------------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, capsys):
    X, y = blobs(60)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 0, err
    return model


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' + "1" * 5000 + "}", "not a readable metadata file"),
])
def test_unreadable_sidecars_are_a_one_line_error(trained, capsys, text, fragment):
    (trained.parent / (trained.name + ".meta.json")).write_text(text)
    for command in ("predict", "evaluate"):
        code, _, err = run(capsys, command, trained, trained.parent / "data.npz")
        assert code == 1 and fragment in one_line_error(err)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(classes=[[[0]], 1, 2]), "class labels must be strings, numbers"),
    (lambda d: d.update(classes=[0, 1, 1.0]), "more than once"),
    (lambda d: d.update(classes={"a": 1}), "classes must be a list"),
    (lambda d: d["feature_mean"].__setitem__(0, 10**400), "not valid fastmlp metadata"),
    (lambda d: d["feature_std"].__setitem__(0, [1.0]), "not valid fastmlp metadata"),
    (lambda d: d["feature_std"].__setitem__(0, 1e309), "finite"),
])
def test_malformed_sidecars_are_a_one_line_error(trained, capsys, change, fragment):
    path = trained.parent / (trained.name + ".meta.json")
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    code, _, err = run(capsys, "predict", trained, trained.parent / "data.npz")
    assert code == 1 and fragment in one_line_error(err)


def test_a_model_file_is_never_left_without_its_sidecar(tmp_path, capsys, monkeypatch):
    X, y = blobs(60)
    np.savez(tmp_path / "data.npz", X=X, y=y)

    def failing_write(path, data):
        raise OSError(28, "No space left on device", os.fspath(path))

    monkeypatch.setattr(_tabular, "atomic_write", failing_write)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 1 and "No space left on device" in one_line_error(err)
    assert no_files(tmp_path)
    monkeypatch.undo()
    # what the sidecar cannot hold is refused before anything is written
    meta = _tabular.ModelMeta(classes=[0, 1j], feature_names=None, target=None,
                              scaler=_tabular.Standardizer.identity(3))
    with pytest.raises(_tabular.DataError, match="cannot be written as JSON"):
        _tabular.save_with_meta(MLP([3, 2]), meta, tmp_path / "model.npz")
    meta.classes = [0, float("nan")]
    with pytest.raises(_tabular.DataError, match="cannot be written as JSON"):
        _tabular.save_with_meta(MLP([3, 2]), meta, tmp_path / "model.npz")
    assert no_files(tmp_path)
    # a retrain replaces both
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 0, err
    first = model.read_bytes()
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz", "--seed", "3")
    assert code == 0 and model.read_bytes() != first
    code, _, err = run(capsys, "predict", model, tmp_path / "data.npz")
    assert code == 0, err


@pytest.mark.parametrize("case", ["inflated header", "zip bomb"])
def test_data_archives_that_declare_more_than_they_hold_are_one_line_errors(capsys, tmp_path,
                                                                             case):
    """The CLI's .npz reader is the bounded one (fastmlp/_npz.py): a few-KB file that
    declares 10^6 x 10^6 features, or a deflated member of 64 MB zeros, is refused from its
    headers and zip sizes, without allocating what they declare."""
    import tracemalloc
    from test_io import npy_bytes, write_bomb, write_zip
    path = tmp_path / "data.npz"
    labels = np.arange(4) % 2
    if case == "inflated header":
        write_zip(path, {"X": npy_bytes((10**6, 10**6), data=bytes(64)), "y": labels})
    else:
        write_bomb(path, {"y": labels}, "X", (4096, 4096))
    tracemalloc.start()
    try:
        code, model, err = train(capsys, tmp_path, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code != 0 and peak < 8 << 20
    line = one_line_error(err)
    assert "data.npz" in line
    assert no_files(tmp_path)


def test_train_keeps_the_mode_of_a_replaced_model_and_follows_a_symlink(capsys, tmp_path):
    """The model and its sidecar are saved like every fastmlp file: a replaced model keeps
    its permission bits, and a symlink's target is replaced (the link stays a link)."""
    X, y = blobs()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 0, err
    os.chmod(model, 0o640)
    code, model, err = train(capsys, tmp_path, tmp_path / "data.npz")
    assert code == 0, err
    assert os.stat(model).st_mode & 0o777 == 0o640
    target = tmp_path / "store" / "real.npz"
    target.parent.mkdir()
    (tmp_path / "link.npz").symlink_to(target)
    code, _, err = train(capsys, tmp_path, tmp_path / "data.npz", out="link.npz")
    assert code == 0, err
    assert (tmp_path / "link.npz").is_symlink() and target.is_file()
    assert (tmp_path / "link.npz.meta.json").is_file()
    code, out, err = run(capsys, "evaluate", tmp_path / "link.npz", tmp_path / "data.npz")
    assert code == 0, err
    assert not [p for p in os.listdir(tmp_path) if "fastmlp" in p and p.endswith(".tmp")]


def test_no_command_writes_its_output_over_one_of_its_inputs(trained, capsys):
    """`train d.npz --out d.npz` replaced the training data with the model, `predict m d.csv
    --out d.csv` the data with the predictions, `predict m d --out m.npz.meta.json` the
    sidecar: nothing a user saved may be lost."""
    folder, data = trained.parent, trained.parent / "data.npz"
    sidecar = folder / (trained.name + ".meta.json")
    (folder / "link").symlink_to(data)
    saved = {p: p.read_bytes() for p in (data, trained, sidecar)}
    for argv, fragment in [
            (("train", data, "--out", data), "--out .* is the training data DATA"),
            (("train", data, "--out", folder / "link"), "--out .* is the training data DATA"),
            (("train", data, "--out", folder / "data"), "--out's sidecar .* is the training data"),
            (("train", data, "--plot", data), "--plot .* is the training data DATA"),
            (("predict", trained, data, "--out", data), "--out .* is the data DATA"),
            (("predict", trained, data, "--out", trained), "--out .* is the model MODEL"),
            (("predict", trained, data, "--out", sidecar), "--out .* is the model's sidecar")]:
        if "--plot" in argv and importlib.util.find_spec("matplotlib") is None:
            continue  # (refused earlier: --plot needs matplotlib)
        if "--out" in argv and argv[-1] == folder / "data":
            (folder / "data.meta.json").unlink(missing_ok=True)
            (folder / "data.meta.json").symlink_to(data)
        code, _, err = run(capsys, *argv)
        assert code == 1, (argv, err)
        assert re.search(fragment, one_line_error(err)), (argv, err)
        assert all(p.read_bytes() == content for p, content in saved.items()), argv
