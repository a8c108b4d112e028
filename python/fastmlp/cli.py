"""The ``fastmlp`` command line.

    fastmlp demo                       train a digits classifier (also plain ``fastmlp``
                                       and ``python -m fastmlp``): a quick check
    fastmlp train DATA --target COL    train on a CSV (header row) or .npz (X, y); writes
                                       model.npz and its sidecar model.npz.meta.json;
                                       --task classification|regression (default inferred)
    fastmlp predict MODEL DATA         print (or --out write) one predicted label per row
                                       (a regression model's values; --proba: probabilities)
    fastmlp evaluate MODEL DATA        accuracy and loss on labelled data (R², RMSE and loss
                                       for a regression model)
    fastmlp bench                      fastmlp vs NumPy (and PyTorch) training throughput
    fastmlp export MODEL OUT.onnx      the model (and its sidecar's scaling) as an ONNX graph

Data files, labels, feature standardisation and the sidecar are described in
``fastmlp._tabular``. User errors (missing files or columns, non-numeric features, a model
that does not fit the data or this machine's memory, values the model's float32 cannot hold,
a malformed sidecar) print one line ``fastmlp: error: ...`` to stderr and exit 1;
usage errors exit 2 (argparse's convention); Ctrl-C exits 130 (``train`` then saves nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import time

import numpy as np

from fastmlp import _cli_export

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad combination of arguments that argparse cannot see: exit status 2."""


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {text!r}")
    return sizes


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**128:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**128), got {text!r}")
    return value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


# ---- demo -----------------------------------------------------------------------------------


def run_demo(epochs: int = 30, hidden: list[int] | None = None, batch_size: int = 32,
             lr: float = 3e-3, seed: int = 0, out=None, precision: str = "float32") -> float:
    """Train on the bundled digits; returns the accuracy on a test split that neither training
    nor the per-epoch validation sees. Splits (each stratified): 20 % test, then 20 % of the
    rest validation, 64 % of all training."""
    out = out or sys.stdout
    from fastmlp import MLP, Adam, __version__, ops
    from fastmlp.datasets import load_digits

    X, y = load_digits()
    X = X / 16.0  # pixel counts 0..16 -> [0, 1]
    test = _stratified_holdout(y, 0.2, seed)
    rest = np.flatnonzero(~test)
    validation = rest[_stratified_holdout(y[rest], 0.2, seed)]
    train = np.setdiff1d(rest, validation)

    hidden = hidden or [128]
    model = MLP([X.shape[1], *hidden, 10], seed=seed, precision=precision)
    print(f"fastmlp {__version__} ({ops.isa()} kernels): {model!r}", file=out)
    print(f"digits: {len(train)} training, {len(validation)} validation and {test.sum()} "
          "test images", file=out)
    started = time.perf_counter()
    model.fit(X[train], y[train], epochs=epochs, batch_size=batch_size, optimizer=Adam(lr=lr),
              seed=seed, validation_data=(X[validation], y[validation]), verbose=out)
    elapsed = time.perf_counter() - started
    accuracy = model.score(X[test], y[test])
    print(f"trained {epochs} epochs in {elapsed:.2f} s "
          f"({epochs * len(train) / elapsed:,.0f} samples/s); test accuracy {accuracy:.4f}",
          file=out)
    return accuracy


def _stratified_holdout(y: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Mask (N,) of the held-out rows: floor(fraction · n_k) random rows of each class k."""
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held_out[members[: int(len(members) * fraction)]] = True
    return held_out


# ---- progress -------------------------------------------------------------------------------


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _tqdm():
    """tqdm's progress bar class, or None when tqdm (the ``progress`` extra) is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _terminal_columns() -> int:
    """The terminal's width: $COLUMNS when set, else the terminal's, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


def _si(value: float) -> str:
    """12,345 -> "12k", 3,456,789 -> "3.5M", 1,000,000 -> "1M": at most 4 characters."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            digits = f"{scaled:.1f}".removesuffix(".0") if scaled < 10 else f"{scaled:.0f}"
            return digits + suffix
    return f"{value:.0f}"


def _literal(text: str) -> str:
    """Text as a tqdm bar_format that shows it as is."""
    return text.replace("{", "{{").replace("}", "}}")


class Progress:
    """An ``MLP.fit`` callback showing epoch, step, loss, the validation score (accuracy, or a
    regression's RMSE in the target's units) and samples/s after every epoch: a tqdm bar when
    tqdm is installed, else one line per epoch. Lines fit the terminal's width: the fields are
    written more tersely, then the bar left out, as the width shrinks (losses to 4 significant
    digits)."""

    MIN_BAR = 10  # columns; a narrower bar says nothing

    def __init__(self, epochs: int, steps_per_epoch: int, stream, target_scaler=None) -> None:
        self.epochs, self.steps_per_epoch, self.stream = epochs, steps_per_epoch, stream
        self.target_std = None if target_scaler is None else float(target_scaler.std[0])
        bar = _tqdm()
        self.bar = None if bar is None else bar(
            total=epochs, file=stream, ncols=_terminal_columns(), leave=True,
            bar_format="{n_fmt}/{total_fmt}")

    def _layouts(self, history) -> list[tuple[str, str, str]]:
        """(left of the bar, right of it, the space between fields), the longest first."""
        epoch = history.epochs
        steps = (epoch * self.steps_per_epoch, self.epochs * self.steps_per_epoch)
        loss = f"{history.loss[-1]:.4g}"
        score = None
        if history.val_accuracy:
            score = ("val_accuracy", "val_acc", f"{history.val_accuracy[-1]:.4f}")
        elif history.val_loss and self.target_std is not None:  # val_loss = mean ½ error²
            rmse = math.sqrt(2 * history.val_loss[-1]) * self.target_std
            score = ("val_rmse", "val_rmse", f"{rmse:.4g}")
        rate = history.samples_per_second[-1]
        layouts = []
        exact, rounded = "{}/{}".format(*steps), "{}/{}".format(*map(_si, steps))
        for separator, short, step, samples in (
                ("  ", False, exact, f"{rate:,.0f} samples/s"),
                (" ", True, exact, f"{rate:,.0f} samples/s"),
                (" ", True, exact, f"{_si(rate)} samples/s"),
                (" ", True, exact, f"{_si(rate)}/s"),
                (" ", True, rounded, f"{_si(rate)}/s")):
            fields = [f"step {step}", f"loss {loss}"]
            if score:
                fields.append(f"{score[1] if short else score[0]} {score[2]}")
            fields.append(samples)
            left = f"{epoch}/{self.epochs}" if short else f"epoch {epoch}/{self.epochs}"
            layouts.append((left, separator.join(fields), separator))
        return layouts

    def line(self, history, width: int, with_bar: bool) -> tuple[str, str | None]:
        """(left, right) of the longest layout that fits ``width`` columns, with a bar of at
        least MIN_BAR columns between them when ``with_bar`` and there is room for one (right
        None: no bar; left is then the whole line, cut to the width if nothing fits)."""
        layouts = self._layouts(history)
        if with_bar:
            for left, right, _ in layouts:
                if len(left) + len(right) + 4 + self.MIN_BAR <= width:  # "left |bar| right"
                    return left, right
        lines = [f"{left}{separator}{right}" for left, right, separator in layouts]
        return next((line for line in lines if len(line) <= width), lines[-1][:width]), None

    def __call__(self, model, history) -> None:
        width = _terminal_columns()
        if self.bar is not None:
            left, right = self.line(history, width - 1, with_bar=True)  # tqdm keeps one free
            self.bar.bar_format = _literal(left) if right is None else \
                f"{_literal(left)} |{{bar}}| {_literal(right)}"
            self.bar.ncols = width - 1
            self.bar.update(1)
        else:
            print(self.line(history, width, with_bar=False)[0], file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- train / predict / evaluate -------------------------------------------------------------


def _optimizer(name: str, lr: float | None):
    """The command line's optimizers; its defaults are README.md's "Training defaults"."""
    from fastmlp import SGD, Adam, AdamW

    if name == "sgd":
        return SGD(lr=0.01 if lr is None else lr, momentum=0.9)
    return (AdamW if name == "adamw" else Adam)(lr=3e-3 if lr is None else lr)


def _say(args, *parts) -> None:
    if not getattr(args, "quiet", False):
        print(*parts, flush=True)


def _check_model_size(sizes: list[int], state_arrays: int) -> None:
    """DataError when the model's parameters, gradients and optimizer state (float32) and its
    float64 initialisation cannot fit in this machine's memory: say so before allocating."""
    from fastmlp._tabular import DataError

    n_parameters = sum(o * (i + 1) for i, o in zip(sizes, sizes[1:]))
    need = n_parameters * (4 * (2 + state_arrays) + 8)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not known on this platform
        physical = 2**62
    if need > physical:
        raise DataError(f"a model of layer sizes {sizes} has {n_parameters:,} parameters and "
                        f"needs about {need / 2**30:,.1f} GiB; this machine has "
                        f"{physical / 2**30:,.1f} GiB (use smaller --hidden sizes)")


def _model_input(X: np.ndarray, table, rows: np.ndarray | None = None) -> np.ndarray:
    """X (standardised features of ``table``'s rows ``rows``, default all) if every value fits
    the model's float32; else DataError naming the first row (1-based, of the data rows) and
    feature of a value that does not."""
    from fastmlp._tabular import DataError, describe_path

    bad = ~(np.abs(X) <= np.finfo(np.float32).max)
    if not bad.any():
        return X
    r, c = (int(i) for i in np.argwhere(bad)[0])
    row = int(rows[r]) if rows is not None else r
    feature = repr(table.feature_names[c]) if table.feature_names else f"column {c}"
    raise DataError(f"{describe_path(table.path)} row {row + 1}, feature {feature}: "
                    f"{table.X[row, c].item()!r} is too far from the training data: scaled it is "
                    "beyond the float32 range of the model")


def _random_holdout(n: int, fraction: float, seed) -> np.ndarray:
    """Mask (N,) of the held-out rows: floor(fraction · n) random rows."""
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n)[: int(n * fraction)]] = True
    return held_out


def _note(args, message: str, kind: str = "note") -> None:
    """One line ``fastmlp: note: ...`` (or another kind) on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"fastmlp: {kind}: {message}", file=sys.stderr, flush=True)


def _regression_scores(model, X: np.ndarray, targets: np.ndarray, target_scaler):
    """(RMSE, R²) of a one-output regression model's predictions, in the target's units."""
    predicted = model.predict(X)[:, 0] * target_scaler.std[0] + target_scaler.mean[0]
    residual = float(np.sum((targets - predicted) ** 2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    r2 = 1 - residual / total if total > 0 else (0.0 if residual > 0 else 1.0)
    return math.sqrt(residual / len(targets)), r2


def run_train(args) -> int:
    from fastmlp import MLP
    from fastmlp._cli_distributed import rank_share
    from fastmlp._tabular import (DataError, ModelMeta, Standardizer, check_output,
                                  encode_labels, infer_task, meta_document, meta_path,
                                  numeric_targets, read_table, save_with_meta)

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise DataError("--plot needs matplotlib, which is not installed "
                        "(pip install 'fastmlp[plot]')")
    is_npz = args.data.lower().endswith(".npz")
    if args.target is None and not is_npz:
        raise UsageError("name the label column of the CSV file with --target COL")
    data = [(args.data, "the training data DATA")]
    check_output(args.out, "--out", data)
    check_output(meta_path(args.out), "--out's sidecar", data)
    if args.plot:
        check_output(args.plot, "--plot", data)
    table = read_table(args.data, target=args.target, need_target=True)
    for note in table.notes:
        _note(args, note, "warning")
    source = f"{table.path!r} {'array' if is_npz else 'column'} {table.target!r}"
    task = args.task
    if task is None:
        task, why = infer_task(table.labels)
        if task == "regression":
            _note(args, f"the target {table.target!r} is numeric ({why}): training a "
                        "regression model (--task classification to treat it as class labels)")
    classes, target_scaler = None, None
    if task == "regression":
        targets = numeric_targets(table.labels, source)
        held_out = _random_holdout(len(targets), args.val_split, args.seed)
        target_scaler = Standardizer.fit(targets[~held_out, None])
        y = target_scaler.transform(targets[:, None])[:, 0]
    else:
        classes, y = encode_labels(table.labels, source)
        held_out = _stratified_holdout(y, args.val_split, args.seed)
    X_train, y_train = table.X[~held_out], y[~held_out]
    scaler = Standardizer.fit(X_train)
    X_train = _model_input(scaler.transform(X_train), table, np.flatnonzero(~held_out))
    validation = None
    if held_out.any():
        validation = (_model_input(scaler.transform(table.X[held_out]), table,
                                   np.flatnonzero(held_out)), y[held_out])

    sizes = [table.X.shape[1], *args.hidden, 1 if classes is None else len(classes)]
    optimizer = _optimizer(args.optimizer, args.lr)
    _check_model_size(sizes, len(optimizer.state_names))
    try:
        model = MLP(sizes, output="identity" if task == "regression" else "softmax",
                    seed=args.seed, precision=args.precision)
    except ValueError as exc:  # sizes beyond any address space
        raise DataError(str(exc)) from None
    batch_size = min(args.batch_size, len(y_train))
    comm, X_train, y_train, validation = rank_share(args, X_train, y_train, validation)
    steps = -(-len(y_train) // batch_size)
    meta = ModelMeta(classes=classes, feature_names=table.feature_names, target=table.target,
                     scaler=scaler, task=task, target_scaler=target_scaler, training={
                         "data": os.path.basename(table.path), "rows": len(y),
                         "hidden": args.hidden, "epochs": args.epochs,
                         "batch_size": batch_size, "optimizer": repr(optimizer),
                         "val_split": args.val_split, "seed": args.seed})
    meta_document(meta, "0" * 64)  # what cannot go in the sidecar is refused before training
    if classes is None:
        what = f"numeric target {table.target!r} (regression)"
    else:
        what = f"{len(classes)} classes (" + ", ".join(str(c) for c in classes[:8]) \
            + (", ...)" if len(classes) > 8 else ")")
    _say(args, f"{table.path}: {len(y)} rows, {table.X.shape[1]} features, {what}; "
               f"training on {int((~held_out).sum())}"
               + (f", validating on {int(held_out.sum())}" if held_out.any() else ""))
    ranks = "" if comm is None else f" per rank, on {comm.Get_size()} MPI ranks"
    _say(args, f"model: {model!r}, {args.optimizer} (lr {optimizer.lr:g}), {args.epochs} "
               f"epochs of {steps} steps (batch {batch_size}){ranks}")
    progress = Progress(args.epochs, steps, sys.stdout, target_scaler) \
        if not args.quiet and _is_terminal(sys.stdout) else None
    started = time.perf_counter()
    try:
        history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=batch_size,
                            optimizer=optimizer, seed=args.seed,
                            validation_data=validation,
                            callbacks=[progress] if progress else None, comm=comm)
    except (FloatingPointError, ValueError) as exc:
        raise DataError(str(exc)) from None
    finally:
        if progress:
            progress.close()
    elapsed = time.perf_counter() - started
    if comm is not None and comm.Get_rank() != 0:
        return EXIT_OK  # rank 0 writes the model
    meta_file = save_with_meta(model, meta, args.out)
    summary = f"trained in {elapsed:.2f} s; loss {history.loss[-1]:.4g}"
    if validation and task == "regression":
        rmse, r2 = _regression_scores(model, validation[0], targets[held_out], target_scaler)
        summary += f", val_rmse {rmse:.4g}, val_r2 {r2:.4f}"
    elif history.val_accuracy:
        summary += (f", val_loss {history.val_loss[-1]:.4g}, "
                    f"val_accuracy {history.val_accuracy[-1]:.4f}")
    _say(args, summary)
    _say(args, f"saved {args.out} (and {meta_file})")
    if args.plot:
        from fastmlp.plot import plot_history
        plot_history(history, path=args.plot)
        _say(args, f"wrote {args.plot}")
    return EXIT_OK


def _load_for_inference(args, need_target: bool):
    """(model, meta or None, X standardised for the model, y class indices (regression:
    targets, in the model's standardised units when the sidecar has them) or None)."""
    from fastmlp._tabular import (DataError, describe_path, labels_to_indices, load_model,
                                  numeric_targets, read_table)

    model, meta = load_model(args.model)
    target = args.target or (meta.target if meta else None)
    if need_target and target is None and not args.data.lower().endswith(".npz"):
        raise UsageError("name the label column with --target (the model has no metadata "
                         "saying which column it was trained on)")
    table = read_table(args.data, target=target,
                       feature_names=meta.feature_names if meta else None,
                       need_target=need_target, npz_fallback=args.target is None)
    for note in table.notes:
        _note(args, note, "warning")
    if table.X.shape[1] != model.n_features:
        raise DataError(f"{describe_path(table.path)} has {table.X.shape[1]} features but the "
                        f"model expects {model.n_features}")
    X = _model_input(meta.scaler.transform(table.X) if meta else table.X, table)
    y = None
    if table.labels is not None and need_target:
        if not model.is_classifier:
            y = numeric_targets(table.labels, describe_path(table.path))
            if meta and meta.target_scaler:
                y = meta.target_scaler.transform(y[:, None])[:, 0]
        else:
            y = labels_to_indices(table.labels, _class_labels(model, meta),
                                  describe_path(table.path))
    return model, meta, X, y


def _class_labels(model, meta) -> list:
    """The original labels of the model's classes when the sidecar has them, else 0..K-1."""
    return meta.classes if meta else list(range(model.n_classes))


def _prediction_rows(model, meta, X) -> list[list[str]]:
    """One row of text per sample: its label (the original one when the sidecar has it), or
    for a regression model its n_outputs values (in the target's units)."""
    try:
        predicted = model.predict(X)
    except ValueError as exc:
        from fastmlp._tabular import DataError
        raise DataError(str(exc)) from None
    if not model.is_classifier:
        if meta and meta.target_scaler:
            predicted = predicted * meta.target_scaler.std + meta.target_scaler.mean
        return [[repr(float(v)) for v in row] for row in predicted]
    if meta:
        return [[str(meta.classes[i])] for i in predicted]
    return [[str(i)] for i in predicted]


def _probability_rows(model, X) -> list[list[str]]:
    """One row of text per sample: the probability of each class (of each label, for a
    multilabel model), 6 significant digits."""
    if not model.is_classifier:
        raise UsageError(f"--proba needs a classifier; the model is a regression model "
                         f"(output {model.output!r}: it predicts numbers, not classes)")
    return [[f"{p:.6g}" for p in row.tolist()] for row in model.predict_proba(X)]


def run_predict(args) -> int:
    import csv
    import io

    from fastmlp._tabular import atomic_write, check_output, meta_path

    if args.out:
        check_output(args.out, "--out", [(args.data, "the data DATA"),
                                         (args.model, "the model MODEL"),
                                         (meta_path(args.model), "the model's sidecar")])
    model, meta, X, _ = _load_for_inference(args, need_target=False)
    if args.proba:
        rows = _probability_rows(model, X)
        header = [str(c) for c in _class_labels(model, meta)]
    else:
        rows = _prediction_rows(model, meta, X)
        width = len(rows[0]) if rows else 1
        header = ["prediction"] if width == 1 else [f"prediction_{k}" for k in range(width)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if args.out or args.proba:  # on stdout, a header only to name the probability columns
        writer.writerow(header)
    if args.out:
        writer.writerows(rows)
        atomic_write(args.out, buffer.getvalue().encode())
        print(f"wrote {len(rows)} {'probabilities' if args.proba else 'predictions'} to "
              f"{args.out}")
    else:
        sys.stdout.write(buffer.getvalue() + "".join(",".join(row) + "\n" for row in rows))
        sys.stdout.flush()
    return EXIT_OK


def run_evaluate(args) -> int:
    from fastmlp._tabular import DataError

    model, meta, X, y = _load_for_inference(args, need_target=True)
    try:
        score, loss = model.score(X, y), model.loss(X, y)
    except ValueError as exc:  # e.g. one target per row for a model of several outputs
        raise DataError(str(exc)) from None
    if model.is_classifier:
        print(f"accuracy {score:.4f}  loss {loss:.4g}  ({len(y)} samples)")
        return EXIT_OK
    if meta and meta.target_scaler:  # the loss in the target's units, not standardised ones
        loss *= float(meta.target_scaler.std[0]) ** 2
    rmse = math.sqrt(2 * loss) if model.output == "identity" else None
    print(f"r2 {score:.4f}  " + (f"rmse {rmse:.4g}  " if rmse is not None else "")
          + f"loss {loss:.4g}  ({len(y)} samples)")
    return EXIT_OK


def run_bench_command(args) -> int:
    from fastmlp._bench import run_bench

    return run_bench(quick=args.quick)


# ---- parser and entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from fastmlp import __version__

    parser = argparse.ArgumentParser(
        prog="fastmlp", description="Fast MLPs on the CPU. Without a command: the demo.")
    parser.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="train a digits classifier (the default command)")
    demo.add_argument("--epochs", type=_positive(int), default=30)
    demo.add_argument("--hidden", type=_hidden_sizes, default=[128],
                      help="hidden layer sizes, comma-separated (default 128)")
    demo.add_argument("--batch-size", type=_positive(int), default=32)
    demo.add_argument("--lr", type=_positive(float), default=3e-3)
    demo.add_argument("--seed", type=_seed, default=0)

    train = commands.add_parser(
        "train", help="train a classifier or a regression on a CSV or .npz file",
        description="Train an MLP classifier (or regression). DATA is a CSV file with a header "
                    "row (the --target column holds the labels, every other column is a "
                    "numeric feature) or a .npz with arrays X (n_samples, n_features) and y. "
                    "Features are standardised with the training rows' mean and std; labels "
                    "may be any strings or numbers. A numeric target (non-integer numbers, or "
                    "integers of more than 20 distinct values and more than 5%% of the rows) "
                    "trains a regression unless --task says otherwise. Writes the model "
                    "(loadable with fastmlp.MLP.load) and OUT.meta.json with the class labels, "
                    "feature names and scaling.")
    train.add_argument("data", metavar="DATA", help="a .csv (.csv.gz, .tsv) or .npz file")
    train.add_argument("--target", metavar="COL",
                       help="the label column (required for CSV; for .npz the label array, "
                            "default y)")
    train.add_argument("--task", choices=("classification", "regression"),
                       help="class labels or a quantity to predict (default: inferred)")
    train.add_argument("--hidden", type=_hidden_sizes, default=[128, 64],
                       help="hidden layer sizes, comma-separated (default 128,64)")
    train.add_argument("--epochs", type=_positive(int), default=30, help="default 30")
    train.add_argument("--batch-size", type=_positive(int), default=32,
                       help="default 32 (under mpiexec: per rank)")
    train.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam",
                       help="adam (default), adamw (weight decay 0.01), sgd (momentum 0.9)")
    train.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                       help="matrix products in float32 (default) or bfloat16 (MLP.precision)")
    train.add_argument("--lr", type=_positive(float), default=None,
                       help="learning rate (default 0.003 for adam and adamw, 0.01 for sgd)")
    train.add_argument("--val-split", type=_fraction, default=0.2, metavar="F",
                       help="fraction of each class (regression: of the rows) held out for "
                            "validation (default 0.2; 0 for none)")
    train.add_argument("--out", default="model.npz", help="model file (default model.npz)")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seed of the initial weights, split and shuffling (default 0)")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.add_argument("--plot", metavar="PNG", help="save the curves there (matplotlib)")

    predict = commands.add_parser(
        "predict", help="predict the label (or value) of every row",
        description="Print the predicted label of every row of DATA, one per line (or write "
                    "them to --out as a one-column CSV); for a regression model, the predicted "
                    "number. Uses MODEL.meta.json, when present, for the labels, feature "
                    "columns and scaling. A target column in DATA is ignored.")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("data", metavar="DATA")
    predict.add_argument("--out", metavar="CSV", help="write the predictions to this file")
    predict.add_argument("--proba", action="store_true",
                         help="the probability of each class instead (a classifier's): one "
                              "column per class, a header row naming them")
    predict.add_argument("--target", metavar="COL",
                         help="a label column to leave out of the features (default: the "
                              "one the model was trained on)")

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and loss on labelled data",
        description="Print the accuracy and the mean loss (negative log-likelihood) of MODEL "
                    "on DATA, which must hold the labels (for a regression model, R², the RMSE "
                    "and the mean of ½ squared error, in the target's units, DATA holding "
                    "numeric targets).")
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--target", metavar="COL",
                          help="the label column (default: the one the model was trained on)")

    bench = commands.add_parser(
        "bench", help="compare training throughput with NumPy (and PyTorch)",
        description="Train small MLPs on synthetic data with fastmlp, a plain-NumPy MLP and "
                    "PyTorch (when installed), each on one thread, and print samples/s and "
                    "their ratios (about 10 s; --quick about 3 s).")
    bench.add_argument("--quick", action="store_true", help="fewer nets and repeats")
    _cli_export.add_parser(commands)
    return parser


def run_demo_command(args) -> int:
    from fastmlp import optim

    _check_model_size([64, *args.hidden, 10], len(optim.Adam().state_names))
    accuracy = run_demo(epochs=args.epochs, hidden=args.hidden, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed)
    return EXIT_OK if accuracy >= 0.95 else EXIT_ERROR


COMMANDS = {"demo": run_demo_command, "train": run_train, "predict": run_predict, "evaluate": run_evaluate,
            "bench": run_bench_command, "export": _cli_export.run_export}


def _error(message: str) -> None:
    print(f"fastmlp: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from fastmlp._tabular import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        if args.command is None:
            args = parser.parse_args(["demo"])
    try:
        return COMMANDS[args.command or "demo"](args)
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except DataError as exc:
        _error(exc)
        return EXIT_ERROR
    except BrokenPipeError:  # stdout closed early, as by `fastmlp predict ... | head`
        try:  # let the interpreter's final flush go to /dev/null instead of failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_ERROR
    except OSError as exc:  # unreadable / unwritable files
        detail = exc.strerror or str(exc)
        _error(f"{detail}: {exc.filename!r}" if exc.filename else detail)
        return EXIT_ERROR
    except MemoryError:
        _error("out of memory (use smaller --hidden sizes or --batch-size, or less data)")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
