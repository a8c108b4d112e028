"""Three interleaved spirals: classes that no straight lines separate, separated by a small
MLP ([2, 32, 3]: 2 inputs, 32 ReLU units, 3 classes). Prints the accuracy and, when matplotlib
is installed (``pip install 'fastmlp[plot]'``), draws the decision regions to
``spirals_decision_boundary.png`` in the output directory (``--out``, default
``fastmlp-examples-output`` in the current directory; the picture committed beside this file
is never overwritten).

    python examples/spirals.py [--out DIR]
"""

import argparse
from pathlib import Path

import numpy as np

import fastmlp


def spirals(n_per_class=200, n_classes=3, noise=0.2, seed=0):
    """X (n_classes·n_per_class, 2), y: class k winds out from the origin along angle
    t + 2πk/n_classes, its radius growing with t."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(n_classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(0.0, 4.0, n_per_class) + 2 * np.pi * k / n_classes \
            + rng.normal(scale=noise, size=n_per_class)
        X.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        y.append(np.full(n_per_class, k))
    return np.concatenate(X).astype(np.float32), np.concatenate(y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fastmlp-examples-output"),
                        metavar="DIR", help="where the picture goes (default "
                                            "./fastmlp-examples-output, created if missing)")
    args = parser.parse_args(argv)
    X, y = spirals()
    linear = fastmlp.MLP([2, 3], seed=0)  # no hidden layer: straight boundaries only
    linear.fit(X, y, epochs=200, batch_size=32, optimizer=fastmlp.Adam(lr=1e-2), seed=0)
    model = fastmlp.MLP([2, 32, 3], seed=0)
    model.fit(X, y, epochs=300, batch_size=32, optimizer=fastmlp.Adam(lr=1e-2), seed=0)
    print(f"training accuracy: linear model [2, 3] {linear.score(X, y):.3f}, "
          f"MLP [2, 32, 3] {model.score(X, y):.3f}")

    try:
        from fastmlp.plot import decision_boundary
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "spirals_decision_boundary.png"
        decision_boundary(model, X, y, path=path)
        print(f"wrote {path}")
    except ImportError:
        print("matplotlib is not installed: no picture (pip install 'fastmlp[plot]')")


if __name__ == "__main__":
    main()
