"""Does bfloat16 train as well as float32? Test accuracy of the same runs in both precisions,
mean over seeds (the issue's criterion: within 0.5 points of float32).

- demo: `fastmlp demo`'s run (the bundled 8×8 digits, [64, 128, 10], Adam 3e-3, 30 epochs,
  batch 32, its own stratified test split), cli.run_demo.
- sklearn-digits: scikit-learn's digits (pixels / 16, a stratified 25 % test split),
  fastmlp.MLPClassifier with scikit-learn's defaults (hidden 100, Adam 1e-3, up to 200
  epochs with its stopping rule).
- mnist-like: 20,000 synthetic 28×28 images of 10 classes (each a random smooth prototype,
  shifted by up to 3 pixels, scaled, plus heavy pixel noise), 25 % held out, [784, 256, 256, 10],
  Adam 1e-3, batch 128, 5 epochs.
Every run trains on the GEMM layout (fastmlp._testing.layout("rows")): the automatic choice
would train the two digits nets feature-major, in float32 whatever the precision.

    python benchmarks/bf16_accuracy.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings

import numpy as np

import fastmlp
from fastmlp import _testing, cli


def mnist_like(n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = 28
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1)
    prototypes = []
    for _ in range(10):  # a few Gaussian strokes each
        image = np.zeros((size, size))
        for _ in range(4):
            centre = rng.uniform(6, 22, 2)
            width = rng.uniform(1.5, 3.5)
            image += np.exp(-((grid - centre) ** 2).sum(-1) / (2 * width**2))
        prototypes.append(image / image.max())
    y = rng.integers(0, 10, n)
    X = np.empty((n, size * size), dtype=np.float32)
    for i, label in enumerate(y):
        dx, dy = rng.integers(-3, 4, 2)
        image = np.roll(np.roll(prototypes[label], dx, 0), dy, 1) * rng.uniform(0.7, 1.3)
        X[i] = np.clip(image + rng.normal(0, 0.6, (size, size)), 0, 1).ravel()
    return X, y


def demo_accuracy(precision: str, seed: int) -> float:
    return cli.run_demo(seed=seed, out=io.StringIO(), precision=precision)


def sklearn_digits_accuracy(precision: str, seed: int) -> float:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, stratify=y, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = fastmlp.MLPClassifier(random_state=seed, precision=precision)
        return clf.fit(X_train, y_train).score(X_test, y_test)


_MNIST = None


def mnist_like_accuracy(precision: str, seed: int) -> float:
    global _MNIST
    if _MNIST is None:
        _MNIST = mnist_like()
    X, y = _MNIST
    test = np.arange(len(y)) % 4 == 0
    model = fastmlp.MLP([784, 256, 256, 10], seed=seed, precision=precision)
    model.fit(X[~test], y[~test], epochs=5, batch_size=128, optimizer=fastmlp.Adam(lr=1e-3),
              seed=seed)
    return model.score(X[test], y[test])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"fastmlp {fastmlp.__version__}, isa {fastmlp.ops.isa()}, bf16 path "
          f"{fastmlp.ops.bf16_path()}; mean test accuracy over {args.seeds} seeds")
    print(f"{'workload':<16} {'float32':>9} {'bfloat16':>9} {'difference':>11}")
    worst = 0.0
    with _testing.layout("rows"):
        for name, run in (("demo", demo_accuracy), ("sklearn-digits", sklearn_digits_accuracy),
                          ("mnist-like", mnist_like_accuracy)):
            means = {p: np.mean([run(p, s) for s in range(args.seeds)])
                     for p in ("float32", "bfloat16")}
            difference = means["bfloat16"] - means["float32"]
            worst = max(worst, abs(difference))
            print(f"{name:<16} {means['float32']:>9.4f} {means['bfloat16']:>9.4f} "
                  f"{100 * difference:>+10.2f} pt")
    return 0 if worst <= 0.005 else 1


if __name__ == "__main__":
    sys.exit(main())
