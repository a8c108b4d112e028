"""``fastmlp train --task``: the task inferred from the target, regression models trained,
saved with their target scaling, and used by ``predict`` and ``evaluate``."""

import json

import numpy as np
import pytest

from fastmlp import MLP, _tabular, cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def houses(n=300, seed=0):
    """X (n, 3) and a price: a smooth function of the features, in the hundreds of
    thousands, with 0.5 % noise; written as a CSV with columns a, b, c, price."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    price = 200_000 + 50_000 * X[:, 0] - 30_000 * X[:, 1] + 20_000 * np.tanh(X[:, 2])
    return X, price * (1 + 0.005 * rng.normal(size=n))


def write_csv(path, X, target, name="price"):
    rows = ["a,b,c," + name] + [",".join(map(str, [*x.tolist(), t]))
                                for x, t in zip(X, target)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("labels, task", [
    (np.array(["cat", "dog", "7"] * 50), "classification"),
    (np.array([True, False] * 50), "classification"),
    (np.arange(300) % 10, "classification"),                   # 10 distinct integers
    (np.arange(300) % 21, "regression"),                       # 21 > 20 and > 5 % of 300
    (np.arange(1000) % 21, "classification"),                  # 21 <= 5 % of 1000
    (np.array(["1", "2.5", "3"] * 10), "regression"),          # a non-integer number
    (np.array([0.0, 1.0, 2.0] * 10), "classification"),        # integral floats: labels
    (np.arange(214).astype(str), "regression"),                # the 214 values
])
def test_the_task_is_inferred_from_the_target(labels, task):
    assert _tabular.infer_task(labels)[0] == task


def test_a_numeric_target_trains_a_regression_with_a_note(tmp_path, capsys):
    X, price = houses()
    data = write_csv(tmp_path / "houses.csv", X, price)
    model_path = tmp_path / "model.npz"
    code, out, err = run(capsys, "train", data, "--target", "price", "--epochs", "60",
                         "--hidden", "32", "--out", model_path)
    assert code == 0, err
    assert err.startswith("fastmlp: note: the target 'price' is numeric (non-integer numbers, "
                          "300 distinct values in 300 rows): training a regression model")
    assert "numeric target 'price' (regression)" in out and "val_accuracy" not in out
    summary = next(line for line in out.splitlines() if line.startswith("trained in"))
    rmse = float(summary.split("val_rmse ")[1].split(",")[0])
    r2 = float(summary.split("val_r2 ")[1])
    assert 0 < rmse < 10_000 and r2 > 0.95  # in dollars: the target's units

    model = MLP.load(model_path)
    assert model.output == "identity" and model.layer_sizes == (3, 32, 1)
    meta = json.loads((tmp_path / "model.npz.meta.json").read_text())
    assert meta["task"] == "regression" and meta["classes"] is None
    assert meta["target_mean"] == pytest.approx(price.mean(), rel=0.05)
    assert meta["target_std"] == pytest.approx(price.std(), rel=0.1)

    code, out, err = run(capsys, "predict", model_path, data)
    assert code == 0, err
    predicted = np.array([float(v) for v in out.split()])
    assert predicted.shape == (300,)
    assert np.sqrt(np.mean((predicted - price) ** 2)) < 10_000  # numbers, in dollars

    code, out, err = run(capsys, "evaluate", model_path, data)
    assert code == 0, err
    fields = out.split()
    assert fields[0] == "r2" and float(fields[1]) > 0.95
    assert fields[2] == "rmse" and float(fields[3]) == pytest.approx(
        np.sqrt(np.mean((predicted - price) ** 2)), rel=1e-3)
    assert fields[4] == "loss" and float(fields[5]) == pytest.approx(float(fields[3]) ** 2 / 2,
                                                                       rel=1e-3)


def test_task_overrides_the_inference(tmp_path, capsys):
    X, price = houses(120)
    counts = np.round(price / 10_000).astype(int)  # integers of ~20 distinct values
    data = write_csv(tmp_path / "counts.csv", X, counts, name="n")
    code, out, err = run(capsys, "train", data, "--target", "n", "--task", "regression",
                         "--epochs", "2", "--out", tmp_path / "r.npz")
    assert code == 0 and err == "" and "(regression)" in out  # no note when told
    assert MLP.load(tmp_path / "r.npz").output == "identity"
    labels = write_csv(tmp_path / "few.csv", X, np.arange(120) % 3, name="n")
    code, out, err = run(capsys, "train", labels, "--target", "n", "--epochs", "2",
                         "--out", tmp_path / "c.npz")
    assert code == 0 and err == "" and "3 classes (0, 1, 2)" in out
    code, _, err = run(capsys, "train", data, "--target", "n", "--task", "classification",
                       "--epochs", "2", "--out", tmp_path / "c.npz")
    assert code == 0, err
    assert MLP.load(tmp_path / "c.npz").output == "softmax"


def test_regression_of_text_is_a_one_line_error(tmp_path, capsys):
    X, _ = houses(30)
    data = write_csv(tmp_path / "t.csv", X, ["cheap", "dear"] * 15)
    code, _, err = run(capsys, "train", data, "--target", "price", "--task", "regression",
                       "--out", tmp_path / "m.npz")
    assert code == 1 and err.startswith("fastmlp: error: ") and err.count("\n") == 1
    assert "a regression model needs numeric targets" in err
    assert not (tmp_path / "m.npz").exists()


def test_quiet_regression_prints_nothing(tmp_path, capsys):
    X, price = houses(60)
    data = write_csv(tmp_path / "h.csv", X, price)
    code, out, err = run(capsys, "train", data, "--target", "price", "--epochs", "2",
                         "--out", tmp_path / "m.npz", "--quiet")
    assert (code, out, err) == (0, "", "")


@pytest.mark.parametrize("change, fragment", [
    (dict(task="clustering"), "task must be one of"),
    (dict(task="classification"), "describes a classification model"),
    (dict(classes=[1, 2]), "classes must be null"),
    (dict(target_std=0.0), "target_std must be finite"),
])
def test_malformed_regression_sidecars_are_one_line_errors(tmp_path, capsys, change, fragment):
    X, price = houses(60)
    data = write_csv(tmp_path / "h.csv", X, price)
    assert run(capsys, "train", data, "--target", "price", "--epochs", "2",
               "--out", tmp_path / "m.npz")[0] == 0
    sidecar = tmp_path / "m.npz.meta.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **change}))
    code, _, err = run(capsys, "predict", tmp_path / "m.npz", data)
    assert code == 1 and fragment in err and err.count("\n") == 1
