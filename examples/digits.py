"""Handwritten digits (the 8×8 images bundled with fastmlp): train a [64, 128, 10] MLP on 80 %
of them and print its accuracy on the held-out 20 %.

    python examples/digits.py
"""

import numpy as np

import fastmlp
from fastmlp.datasets import load_digits


def main():
    X, y = load_digits()
    X = (X / 16.0).astype(np.float32)  # pixel counts 0..16 -> [0, 1]
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5:]

    model = fastmlp.MLP([64, 128, 10], seed=0)
    history = model.fit(X[train], y[train], epochs=30, batch_size=32,
                        optimizer=fastmlp.Adam(lr=3e-3), seed=0,
                        validation_data=(X[test], y[test]))
    print(f"{model!r}: {len(train)} training images, 30 epochs, "
          f"{np.median(history.samples_per_second):,.0f} samples/s")
    print(f"held-out accuracy {model.score(X[test], y[test]):.4f} on {len(test)} images")


if __name__ == "__main__":
    main()
