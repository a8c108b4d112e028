"""The ``fastmlp`` command line. ``fastmlp demo`` (also plain ``fastmlp`` or
``python -m fastmlp``) trains a digits classifier as a quick check that everything works."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def run_demo(epochs: int = 30, hidden: list[int] | None = None, batch_size: int = 32,
             lr: float = 3e-3, seed: int = 0, out=None) -> float:
    """Train on the bundled digits (80/20 split, stratified); returns the test accuracy."""
    out = out or sys.stdout
    from fastmlp import MLP, Adam, __version__, ops
    from fastmlp.datasets import load_digits

    X, y = load_digits()
    X = X / 16.0  # pixel counts 0..16 -> [0, 1]
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):  # stratified: 20% of each digit is held out
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: len(members) // 5]] = True
    X_train, y_train, X_test, y_test = X[~test], y[~test], X[test], y[test]

    hidden = hidden or [128]
    model = MLP([X.shape[1], *hidden, 10], seed=seed)
    print(f"fastmlp {__version__} ({ops.isa()} kernels): {model!r}", file=out)
    print(f"digits: {len(y_train)} training and {len(y_test)} held-out images", file=out)
    started = time.perf_counter()
    model.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, optimizer=Adam(lr=lr),
              seed=seed, validation_data=(X_test, y_test), verbose=out)
    elapsed = time.perf_counter() - started
    accuracy = model.score(X_test, y_test)
    print(f"trained {epochs} epochs in {elapsed:.2f} s "
          f"({epochs * len(y_train) / elapsed:,.0f} samples/s); test accuracy {accuracy:.4f}",
          file=out)
    return accuracy


def build_parser() -> argparse.ArgumentParser:
    from fastmlp import __version__

    parser = argparse.ArgumentParser(prog="fastmlp", description="Fast MLPs on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train a digits classifier (the default command)")
    demo.add_argument("--epochs", type=_positive(int), default=30)
    demo.add_argument("--hidden", type=_hidden_sizes, default=[128],
                      help="hidden layer sizes, comma-separated (default 128)")
    demo.add_argument("--batch-size", type=_positive(int), default=32)
    demo.add_argument("--lr", type=_positive(float), default=3e-3)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "demo"):
        if args.command is None:
            args = build_parser().parse_args(["demo"])
        accuracy = run_demo(epochs=args.epochs, hidden=args.hidden, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed)
        return 0 if accuracy >= 0.95 else 1
    return 2  # pragma: no cover - argparse rejects unknown commands itself


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
