"""Pictures with matplotlib (the optional ``plot`` extra: ``pip install 'fastmlp[plot]'``):
training curves, and the decision regions of a model with two input features.

Every function draws into ``ax`` when given (and returns its Figure); otherwise it makes a
new Figure. With ``path`` and no ``ax`` the Figure is a standalone one rendered by the Agg
backend — no display, no pyplot state, nothing to close — and saved there (the format
follows the file name's extension, PNG when it has none). Without ``path`` or ``ax`` the
Figure comes from ``matplotlib.pyplot``, so ``plt.show()`` and notebooks display it.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_history", "decision_boundary"]


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("fastmlp.plot needs matplotlib, which is not installed "
                          "(pip install 'fastmlp[plot]')") from None
    return matplotlib


def _new_figure(path, ncols: int, width_per_plot: float = 5.0, height: float = 4.0):
    figsize = (width_per_plot * ncols, height)
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        figure = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(figure)
    else:
        import matplotlib.pyplot as plt
        figure = plt.figure(figsize=figsize, layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _save(figure, path) -> None:
    if path is not None:
        path = os.fspath(path)
        kwargs = {} if os.path.splitext(path)[1] else {"format": "png"}
        figure.savefig(path, dpi=120, **kwargs)


def plot_history(history, path=None, ax=None):
    """Loss per epoch (training ``loss`` and, when recorded, ``val_loss``) and validation
    accuracy per epoch, from a ``fastmlp.History``.

    ax: None (a new Figure: loss and accuracy side by side), one Axes (loss on it, accuracy
    on a twin y-axis at the right) or a pair of Axes (loss, accuracy). path: save the Figure
    there. Returns the matplotlib Figure.
    """
    _matplotlib()
    loss = list(history.loss)
    val_loss = list(getattr(history, "val_loss", []))
    val_accuracy = list(getattr(history, "val_accuracy", []))
    if not loss:
        raise ValueError("the history has no epochs to plot")
    epochs = np.arange(1, len(loss) + 1)

    if ax is None:
        figure, axes = _new_figure(path, 2 if val_accuracy else 1)
        loss_ax = axes[0]
        accuracy_ax = axes[1] if val_accuracy else None
    elif isinstance(ax, (list, tuple, np.ndarray)):
        if len(ax) != 2:
            raise ValueError(f"ax must be one Axes or a pair (loss, accuracy), got {len(ax)}")
        loss_ax, accuracy_ax = ax
        figure = loss_ax.figure
    else:
        loss_ax, figure = ax, ax.figure
        accuracy_ax = loss_ax.twinx() if val_accuracy else None

    loss_ax.plot(epochs, loss, marker=".", label="loss")
    if val_loss:
        loss_ax.plot(epochs[:len(val_loss)], val_loss, marker=".", label="val_loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(True, alpha=0.3)
    twin = accuracy_ax is not None and ax is not None and not isinstance(
        ax, (list, tuple, np.ndarray))
    if accuracy_ax is not None and val_accuracy:
        color = "C2"
        accuracy_ax.plot(epochs[:len(val_accuracy)], val_accuracy, marker=".", color=color,
                         label="val_accuracy")
        accuracy_ax.set_ylabel("validation accuracy")
        accuracy_ax.set_ylim(min(0.0, min(val_accuracy)), 1.02)
        if not twin:
            accuracy_ax.set_xlabel("epoch")
            accuracy_ax.grid(True, alpha=0.3)
            accuracy_ax.legend(loc="lower right")
    if twin:
        handles = loss_ax.get_legend_handles_labels()
        extra = accuracy_ax.get_legend_handles_labels()
        loss_ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="center right")
    else:
        loss_ax.legend(loc="upper right")
    loss_ax.set_title("training curves" if twin or accuracy_ax is None else "loss")
    if accuracy_ax is not None and not twin:
        accuracy_ax.set_title("accuracy")
    _save(figure, path)
    return figure


def decision_boundary(model, X, y, path=None, ax=None, resolution: int = 300):
    """The decision regions of ``model`` over the plane of its two input features: a filled
    contour of the predicted class on a ``resolution`` × ``resolution`` grid spanning X (with
    a margin), and the samples X (N, 2) coloured by their labels y (N,) (class indices).

    Raises ValueError unless X has shape (N, 2) and the model takes 2 features. Returns the
    matplotlib Figure; saved to ``path`` when given.
    """
    _matplotlib()
    from matplotlib.colors import ListedColormap
    import matplotlib

    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"decision_boundary draws models of 2 input features: X must have "
                         f"shape (n_samples, 2), got {X.shape}")
    if model.n_features != 2:
        raise ValueError(f"decision_boundary draws models of 2 input features; this model "
                         f"takes {model.n_features}")
    if X.shape[0] == 0:
        raise ValueError("X has no samples")
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) (one label per row of X), "
                         f"got {y.shape}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    X = X.astype(np.float64)

    low, high = X.min(axis=0), X.max(axis=0)
    margin = np.maximum(0.1 * (high - low), 1e-3 * np.maximum(np.abs(high), 1.0))
    x0 = np.linspace(low[0] - margin[0], high[0] + margin[0], resolution)
    x1 = np.linspace(low[1] - margin[1], high[1] + margin[1], resolution)
    grid0, grid1 = np.meshgrid(x0, x1)  # (R, R) each
    predicted = model.predict(np.column_stack([grid0.ravel(), grid1.ravel()]))
    predicted = predicted.reshape(grid0.shape)

    n_classes = model.n_classes
    base = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    colors = [base(k % base.N) for k in range(n_classes)]
    cmap = ListedColormap(colors)
    levels = np.arange(n_classes + 1) - 0.5

    if ax is None:
        figure, (ax,) = _new_figure(path, 1, width_per_plot=5.5, height=5.0)
    else:
        figure = ax.figure
    ax.contourf(grid0, grid1, predicted, levels=levels, cmap=cmap, alpha=0.35)
    for i, k in enumerate(np.unique(y).tolist()):
        members = y == k
        index = k if isinstance(k, int) and 0 <= k < n_classes else i  # class k's own colour
        ax.scatter(X[members, 0], X[members, 1], s=14, color=colors[index % n_classes],
                   edgecolors="k", linewidths=0.3, label=f"class {k}")
    ax.set_xlim(x0[0], x0[-1])
    ax.set_ylim(x1[0], x1[-1])
    ax.set_xlabel("feature 0")
    ax.set_ylabel("feature 1")
    ax.set_title(f"decision regions of MLP{list(model.layer_sizes)}")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    _save(figure, path)
    return figure
