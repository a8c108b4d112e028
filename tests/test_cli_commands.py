"""The ``fastmlp train / predict / evaluate / bench`` commands: CSV and .npz data, the metadata
sidecar, progress output, and one-line errors with their exit statuses."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, cli

CLASSES = ["bird", "cat", "dog"]


def blobs(n=90, seed=0):
    """X (n, 3): three well-separated clusters; labels: their names."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 5.0, 100.0], [5.0, 0.0, 110.0], [-5.0, -5.0, 90.0]])
    k = np.arange(n) % 3
    X = centres[k] + rng.normal(scale=[1.0, 1.0, 3.0], size=(n, 3))  # raw, unscaled units
    return X, np.array(CLASSES)[k]


FEATURES = ("height", "weight", "age")  # the columns of X


def write_csv(path, X, labels, columns=("height", "weight", "label", "age"), target="label"):
    """A CSV of these columns: X's under their FEATURES names, labels under ``target``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row, label in zip(X, labels):
            values = dict(zip(FEATURES, (f"{v:.4f}" for v in row)), **{target: label})
            writer.writerow([values[c] for c in columns])
    return path


@pytest.fixture
def data_csv(tmp_path):
    X, labels = blobs()
    return write_csv(tmp_path / "animals.csv", X, labels)


@pytest.fixture
def trained(tmp_path, data_csv, capsys):
    model = tmp_path / "model.npz"
    code = cli.main(["train", str(data_csv), "--target", "label", "--hidden", "16",
                     "--epochs", "15", "--lr", "0.01", "--out", str(model)])
    capsys.readouterr()
    assert code == 0
    return model


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_a_plain_model_and_its_sidecar(tmp_path, data_csv, capsys):
    model_path = tmp_path / "model.npz"
    code, out, err = run(capsys, "train", data_csv, "--target", "label", "--hidden", "16",
                         "--epochs", "15", "--lr", "0.01", "--out", model_path, "--seed", "3")
    assert code == 0, err
    assert err == ""
    assert "3 classes (bird, cat, dog)" in out and f"saved {model_path}" in out
    assert "val_accuracy" in out  # the final summary (validation split defaults to 0.2)
    model = MLP.load(model_path)  # still a plain fastmlp model file
    assert model.layer_sizes == (3, 16, 3)
    meta = json.loads((tmp_path / "model.npz.meta.json").read_text())
    assert meta["format"] == "fastmlp.cli-metadata" and meta["format_version"] == 1
    assert meta["classes"] == CLASSES
    assert meta["target"] == "label"
    assert meta["feature_names"] == ["height", "weight", "age"]
    assert len(meta["feature_mean"]) == len(meta["feature_std"]) == 3
    assert meta["feature_mean"][2] == pytest.approx(100, abs=5)  # raw units, standardised
    assert sorted(os.listdir(tmp_path)) == ["animals.csv", "model.npz", "model.npz.meta.json"]


def test_predict_prints_original_labels_one_per_row(trained, data_csv, capsys):
    code, out, err = run(capsys, "predict", trained, data_csv)
    assert code == 0, err
    predictions = out.splitlines()
    _, labels = blobs()
    assert len(predictions) == len(labels)
    assert set(predictions) <= set(CLASSES)
    assert np.mean(np.array(predictions) == labels) > 0.95


def test_predict_out_writes_a_csv(trained, data_csv, tmp_path, capsys):
    out_path = tmp_path / "preds.csv"
    code, out, _ = run(capsys, "predict", trained, data_csv, "--out", out_path)
    assert code == 0
    assert f"wrote 90 predictions to {out_path}" in out
    with open(out_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction"] and len(rows) == 91
    assert {r[0] for r in rows[1:]} <= set(CLASSES)


@pytest.mark.parametrize("to_file", [False, True])
def test_predict_proba_writes_a_column_per_class(trained, data_csv, tmp_path, capsys, to_file):
    out_path = tmp_path / "proba.csv"
    code, out, err = run(capsys, "predict", trained, data_csv, "--proba",
                         *(["--out", out_path] if to_file else []))
    assert code == 0, err
    text = out_path.read_text() if to_file else out
    assert (f"wrote 90 probabilities to {out_path}" in out) == to_file
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CLASSES and len(rows) == 91  # the class labels name the columns
    probabilities = np.array(rows[1:], dtype=float)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    _, labels, _ = run(capsys, "predict", trained, data_csv)
    assert [CLASSES[k] for k in probabilities.argmax(axis=1)] == labels.split()


def test_predict_proba_of_a_regression_model_is_a_usage_error(tmp_path, data_csv, capsys):
    MLP([3, 4, 1], output="identity", seed=0).save(tmp_path / "reg.npz")
    code, out, err = run(capsys, "predict", tmp_path / "reg.npz", data_csv, "--target", "label",
                         "--proba", "--out", tmp_path / "p.csv")
    assert code == 2 and out == "" and not (tmp_path / "p.csv").exists()
    assert "--proba needs a classifier; the model is a regression model" in one_line_error(err)


def test_a_pandas_index_column_is_dropped_with_a_warning(tmp_path, data_csv, capsys):
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(data_csv)
    frame.to_csv(tmp_path / "indexed.csv")  # the index, 0..89, as an unnamed first column
    code, out, err = run(capsys, "train", tmp_path / "indexed.csv", "--target", "label",
                         "--epochs", "2", "--out", tmp_path / "m.npz")
    assert code == 0
    assert err == (f"fastmlp: warning: '{tmp_path / 'indexed.csv'}': dropped the first column '', "
                   "a row index 0..89 (as pandas' to_csv writes it), not a feature\n")
    assert MLP.load(tmp_path / "m.npz").n_features == 3
    meta = json.loads((tmp_path / "m.npz.meta.json").read_text())
    assert meta["feature_names"] == ["height", "weight", "age"]
    frame.to_csv(tmp_path / "named.csv", index_label="Unnamed: 0")  # as pandas reads it back
    code, _, err = run(capsys, "predict", tmp_path / "m.npz", tmp_path / "named.csv")
    assert code == 0 and "dropped the first column 'Unnamed: 0'" in err


@pytest.mark.parametrize("first", [
    ["", "5", "1", "2"],            # not 0..n-1 in order: data
    ["id", "0", "1", "2"],          # named: a feature the user chose to keep
])
def test_only_an_unnamed_row_index_is_dropped(tmp_path, capsys, first):
    rows = [[first[0], "x", "label"]] + [[v, str(i * 0.5), "ab"[i % 2]]
                                         for i, v in enumerate(first[1:])]
    (tmp_path / "d.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    code, _, err = run(capsys, "train", tmp_path / "d.csv", "--target", "label", "--epochs", "1",
                       "--out", tmp_path / "m.npz")
    assert code == 0 and "dropped" not in err
    assert MLP.load(tmp_path / "m.npz").n_features == 2


def test_predict_selects_feature_columns_by_name(trained, data_csv, tmp_path, capsys):
    X, labels = blobs()
    shuffled = write_csv(tmp_path / "reordered.csv", X, labels,
                         columns=("age", "id", "weight", "height"), target="id")
    code, reordered, _ = run(capsys, "predict", trained, shuffled, "--target", "id")
    assert code == 0
    _, original, _ = run(capsys, "predict", trained, data_csv)
    assert reordered == original


def test_evaluate_reports_accuracy_and_loss(trained, data_csv, capsys):
    code, out, err = run(capsys, "evaluate", trained, data_csv)
    assert code == 0, err
    fields = out.split()
    assert fields[0] == "accuracy" and fields[2] == "loss" and "(90 samples)" in out
    assert float(fields[1]) > 0.95 and 0 <= float(fields[3]) < 0.5


def test_npz_data_and_integer_labels(tmp_path, capsys):
    X, names = blobs()
    y = np.array([3, 7, 11])[np.searchsorted(CLASSES, names)]
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    model = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", data, "--epochs", "15", "--lr", "0.01", "--hidden", "16",
                         "--out", model)
    assert code == 0, err
    meta = json.loads((tmp_path / "m.npz.meta.json").read_text())
    assert meta["classes"] == [3, 7, 11] and meta["feature_names"] is None
    code, out, _ = run(capsys, "predict", model, data)
    assert code == 0
    assert np.mean(np.array(out.split(), dtype=int) == y) > 0.95
    code, out, _ = run(capsys, "evaluate", model, data)
    assert code == 0 and float(out.split()[1]) > 0.95
    np.savez(tmp_path / "features_only.npz", X=X[:4])
    code, out, _ = run(capsys, "predict", model, tmp_path / "features_only.npz")
    assert code == 0 and len(out.split()) == 4


def test_numeric_labels_are_ordered_by_value(tmp_path, capsys):
    X, names = blobs()
    labels = np.array(["10", "9", "2"])[np.searchsorted(CLASSES, names)]
    data = write_csv(tmp_path / "d.csv", X, labels)
    code, _, _ = run(capsys, "train", data, "--target", "label", "--epochs", "2",
                     "--out", tmp_path / "m.npz")
    assert code == 0
    assert json.loads((tmp_path / "m.npz.meta.json").read_text())["classes"] == ["2", "9", "10"]


def test_a_model_without_sidecar_predicts_class_indices(tmp_path, capsys):
    model = MLP([3, 4, 2], seed=0)
    model.save(tmp_path / "plain.npz")
    data = tmp_path / "x.npz"
    np.savez(data, X=np.ones((5, 3)), y=np.array([0, 1, 0, 1, 1]))
    code, out, _ = run(capsys, "predict", tmp_path / "plain.npz", data)
    assert code == 0 and set(out.split()) <= {"0", "1"} and len(out.split()) == 5
    code, out, _ = run(capsys, "evaluate", tmp_path / "plain.npz", data)
    assert code == 0 and out.startswith("accuracy ")


@pytest.mark.parametrize("name, optimizer", [("adam", "Adam(lr=0.003"), ("adamw", "AdamW(lr=0.003"),
                                             ("sgd", "SGD(lr=0.01, momentum=0.9")])
def test_train_optimizers_and_their_defaults(tmp_path, data_csv, capsys, name, optimizer):
    code, out, err = run(capsys, "train", data_csv, "--target", "label", "--epochs", "1",
                         "--optimizer", name, "--out", tmp_path / "m.npz")
    assert code == 0, err
    meta = json.loads((tmp_path / "m.npz.meta.json").read_text())
    assert meta["training"]["optimizer"].startswith(optimizer), meta["training"]["optimizer"]


def test_quiet_prints_nothing(tmp_path, data_csv, capsys):
    code, out, err = run(capsys, "train", data_csv, "--target", "label", "--epochs", "2",
                         "--out", tmp_path / "m.npz", "--quiet")
    assert code == 0 and out == "" and err == ""
    assert (tmp_path / "m.npz").exists()


def test_no_progress_output_when_stdout_is_not_a_terminal(tmp_path, data_csv, capsys):
    code, out, err = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                         "--out", tmp_path / "m.npz")
    assert code == 0
    assert "epoch 1/3" not in out and "%|" not in out + err and "step " not in out + err
    assert len(out.splitlines()) == 4  # data, model, summary, saved


def test_progress_bar_on_a_terminal(tmp_path, data_csv, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    code, out, _ = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                       "--out", tmp_path / "m.npz")
    assert code == 0
    assert "3/3" in out and "step 9/9" in out and "val_accuracy" in out and "samples/s" in out


def test_progress_lines_without_tqdm(tmp_path, data_csv, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    monkeypatch.setattr(cli, "_tqdm", lambda: None)
    code, out, _ = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                       "--out", tmp_path / "m.npz")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    assert lines[-1].startswith("epoch 3/3  step 9/9  loss ")
    assert "val_accuracy" in lines[-1] and lines[-1].endswith("samples/s")


def progress_segments(text):
    """What a terminal would show as lines: tqdm redraws with \\r."""
    return [segment for segment in text.replace("\r", "\n").split("\n") if segment]


@pytest.mark.parametrize("columns", [80, 60])
@pytest.mark.parametrize("bar", [True, False])
def test_progress_fits_the_terminal_with_every_field(columns, bar, monkeypatch):
    if bar:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setattr(cli, "_tqdm", lambda: None)
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = io.StringIO()
    progress = cli.Progress(1000, 1000, stream)
    history = fastmlp.History()
    for _ in range(1000):  # a long fit of many steps at a high rate: the widest numbers
        history.loss.append(1.2345e-05)
        history.val_loss.append(0.5)
        history.val_accuracy.append(0.98765)
        history.samples_per_second.append(12_345_678.0)
        progress(None, history)
    progress.close()
    segments = progress_segments(stream.getvalue())
    assert all(len(segment) <= columns for segment in segments), segments
    last = segments[-1]
    for field in ("1000/1000", "step 1", "loss 1.234e-05", "val_acc", "0.9877", "12", "/s"):
        assert field in last, (field, last)
    assert "0.0000" not in last
    assert ("|" in last) == (bar and columns == 80)  # a bar where there is room for one


@pytest.mark.parametrize("columns", [80, 60])
def test_train_progress_fits_the_terminal(tmp_path, data_csv, capsys, monkeypatch, columns):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, _ = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                       "--out", tmp_path / "m.npz")
    assert code == 0
    bars = [segment for segment in progress_segments(out)
            if segment.startswith(("3/3", "epoch 3/3"))]
    assert bars and all(len(segment) <= columns for segment in bars), bars
    assert "step 9/9" in bars[-1] and "loss " in bars[-1] and "val_acc" in bars[-1] \
        and "/s" in bars[-1]


def test_plot_writes_the_training_curves(tmp_path, data_csv, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, err = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                         "--out", tmp_path / "m.npz", "--plot", png)
    assert code == 0, err
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and f"wrote {png}" in out


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, data_csv, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, _, err = run(capsys, "train", data_csv, "--target", "label", "--epochs", "3",
                       "--out", tmp_path / "m.npz", "--plot", tmp_path / "c.png")
    assert code == 1
    assert err.startswith("fastmlp: error: --plot needs matplotlib")
    assert not (tmp_path / "m.npz").exists()  # refused before training


def one_line_error(err):
    assert err.startswith("fastmlp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_data_errors_are_one_line_and_exit_1(tmp_path, data_csv, trained, capsys):
    def check(argv, fragment):
        code, out, err = run(capsys, *argv)
        assert code == 1, (argv, err)
        assert fragment in one_line_error(err), err
        return out

    model = tmp_path / "m.npz"
    check(["train", tmp_path / "missing.csv", "--target", "label"], "no such file")
    check(["train", data_csv, "--target", "species"],
          "has no target column 'species' (columns: height, weight, label, age)")

    check(["train", data_csv, "--target", "label", "--out", tmp_path / "no" / "m.npz"],
          "does not exist")
    check(["predict", trained, data_csv, "--out", tmp_path], "is a directory")

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,red,y\n")
    check(["train", bad, "--target", "label", "--out", model],
          "line 3: column 'b' is not numeric ('red')")
    bad.write_text("a,b,label\n1,,x\n3,4,y\n")
    check(["train", bad, "--target", "label", "--out", model], "line 2: column 'b' has an empty")
    bad.write_text("a,b,label\n1,2,x\n3,4\n")
    check(["train", bad, "--target", "label", "--out", model], "line 3: 2 fields, expected 3")
    bad.write_text("a,b,label\n1,2,x\n3,4,x\n")
    check(["train", bad, "--target", "label", "--out", model], "a single class")
    bad.write_text("a,b,label\n1,2,0.5\n3,4,1.25\n")
    check(["train", bad, "--target", "label", "--task", "classification", "--out", model],
          "non-integer numbers")
    bad.write_text("")
    check(["train", bad, "--target", "label", "--out", model], "is empty")
    assert not model.exists()

    X, labels = blobs()
    fewer = write_csv(tmp_path / "fewer.csv", X[:, :2], labels,
                      columns=("height", "weight", "label"))
    check(["predict", trained, fewer], "has 2 feature columns but the model expects 3")
    np.savez(tmp_path / "two.npz", X=X[:, :2], y=np.zeros(90, dtype=int))
    check(["predict", trained, tmp_path / "two.npz"], "has 2 features but the model expects 3")
    check(["predict", tmp_path / "nothing.npz", data_csv], "no such model file")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    check(["predict", tmp_path / "junk.npz", data_csv], "junk.npz' is not a")
    np.savez(tmp_path / "noy.npz", X=X)
    check(["evaluate", trained, tmp_path / "noy.npz"], "has no label array 'label' or 'y'")
    no_label = write_csv(tmp_path / "nolabel.csv", X, labels, columns=("height", "weight", "x",
                                                                       "age"), target="x")
    check(["evaluate", trained, no_label], "has no target column 'label'")
    unseen = write_csv(tmp_path / "unseen.csv", X, np.where(labels == "cat", "cow", labels))
    check(["evaluate", trained, unseen], "label 'cow' (row 1) is not one of the classes")

    changed = MLP.load(trained)
    changed.biases[0] = changed.biases[0] + 1
    changed.save(trained)  # the model changes; its sidecar is now stale
    check(["predict", trained, data_csv], "checksum mismatch")


@pytest.mark.parametrize("argv", [
    ["train", "DATA"],  # a CSV needs --target
    ["train", "DATA", "--target", "label", "--epochs", "0"],
    ["train", "DATA", "--target", "label", "--val-split", "1.5"],
    ["train", "DATA", "--target", "label", "--optimizer", "rmsprop"],
    ["train", "DATA", "--target", "label", "--hidden", "8,x"],
    ["predict", "MODEL"],
    ["evaluate", "MODEL", "DATA"],  # a model without metadata, CSV data: which column?
])
def test_usage_errors_exit_2(argv, tmp_path, data_csv, capsys):
    MLP([3, 3]).save(tmp_path / "plain.npz")
    argv = [{"DATA": data_csv, "MODEL": tmp_path / "plain.npz"}.get(a, a) for a in argv]
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert "fastmlp" in err and "error: " in err and "Traceback" not in err


def test_python_dash_m_train_in_a_subprocess(tmp_path, data_csv):
    model = tmp_path / "m.npz"
    result = subprocess.run(
        [sys.executable, "-m", "fastmlp", "train", str(data_csv), "--target", "label",
         "--epochs", "3", "--out", str(model)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"saved {model}" in result.stdout
    assert "epoch 1/3" not in result.stdout and "step " not in result.stdout  # a pipe: no
    assert result.stderr == ""  # progress bar or lines
    result = subprocess.run([sys.executable, "-m", "fastmlp", "predict", str(model),
                             str(tmp_path / "missing.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert one_line_error(result.stderr).startswith("fastmlp: error: no such file")


def test_broken_pipe_is_not_a_traceback(trained, data_csv, capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["predict", str(trained), str(data_csv)]) == 1


def test_bench_prints_a_table(capsys, monkeypatch):
    from fastmlp import _bench

    monkeypatch.setattr(_bench, "NETS", (_bench.Net("tiny", (8, 16, 3), 16, 256),))
    code, out, _ = run(capsys, "bench", "--quick")
    assert code == 0
    assert "fastmlp/numpy" in out and "tiny" in out
    row = next(line for line in out.splitlines() if line.startswith("tiny"))
    assert row.rstrip().endswith("ok")
