"""fastmlp.plot (matplotlib, the optional ``plot`` extra): files are written, figures are
returned, bad inputs are refused. Skipped when matplotlib is not installed."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # no display in tests; also what the functions use when saving

from matplotlib.figure import Figure  # noqa: E402

from fastmlp import MLP, Adam, History  # noqa: E402
from fastmlp.plot import decision_boundary, plot_history  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_SIGNATURE)


@pytest.fixture
def trained():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 0] > 1)  # 3 classes, not separable
    model = MLP([2, 16, 3], seed=0)
    history = model.fit(X, y, epochs=5, batch_size=32, optimizer=Adam(lr=1e-2), seed=0,
                        validation_data=(X, y))
    return model, X, y, history


def test_plot_history_saves_a_png_without_pyplot(tmp_path, trained):
    import matplotlib.pyplot as plt

    *_, history = trained
    open_before = plt.get_fignums()
    figure = plot_history(history, path=tmp_path / "curves.png")
    assert isinstance(figure, Figure)
    assert is_png(tmp_path / "curves.png")
    assert len(figure.axes) == 2  # loss, accuracy
    assert [line.get_label() for line in figure.axes[0].lines] == ["loss", "val_loss"]
    assert plt.get_fignums() == open_before  # a standalone figure: nothing left to close


def test_plot_history_without_validation_and_without_extension(tmp_path):
    history = History(loss=[1.0, 0.5, 0.25], samples_per_second=[1.0, 1.0, 1.0])
    figure = plot_history(history, path=tmp_path / "curves")
    assert len(figure.axes) == 1
    assert is_png(tmp_path / "curves")


def test_history_plot_delegates(tmp_path, trained):
    *_, history = trained
    figure = history.plot(tmp_path / "h.png")
    assert isinstance(figure, Figure) and is_png(tmp_path / "h.png")


def test_plot_history_draws_into_given_axes(trained):
    *_, history = trained
    figure = Figure()
    ax = figure.subplots()
    assert plot_history(history, ax=ax) is figure
    assert len(figure.axes) == 2  # the loss axes and its twin for accuracy
    figure = Figure()
    pair = figure.subplots(1, 2)
    assert plot_history(history, ax=pair) is figure
    assert pair[1].lines[0].get_label() == "val_accuracy"


def test_plot_history_on_pyplot_without_path(trained):
    import matplotlib.pyplot as plt

    *_, history = trained
    figure = plot_history(history)
    try:
        assert figure.number in plt.get_fignums()  # plt.show() / notebooks display it
    finally:
        plt.close(figure)


def test_plot_history_refuses_an_empty_history():
    with pytest.raises(ValueError, match="no epochs"):
        plot_history(History(), path=None, ax=Figure().subplots())


def test_decision_boundary_saves_a_png(tmp_path, trained):
    model, X, y, _ = trained
    figure = decision_boundary(model, X, y, path=tmp_path / "regions.png", resolution=50)
    assert isinstance(figure, Figure) and is_png(tmp_path / "regions.png")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class 0", "class 1",
                                                                   "class 2"]


def test_decision_boundary_of_a_constant_model_draws_quietly(tmp_path):
    model = MLP([2, 3], seed=0)
    model.weights[0] = np.zeros((3, 2))
    model.biases[0] = np.array([1.0, 0.0, 0.0])  # predicts class 0 everywhere
    X = np.array([[0.0, 0.0], [1.0, 1.0]])
    decision_boundary(model, X, np.array([0, 1]), path=tmp_path / "c.png", resolution=10)
    assert is_png(tmp_path / "c.png")


@pytest.mark.parametrize("X", [np.zeros((10, 3)), np.zeros(10), np.zeros((2, 5, 2))])
def test_decision_boundary_needs_2d_inputs(trained, X):
    model, *_ = trained
    with pytest.raises(ValueError, match="2 input features"):
        decision_boundary(model, X, np.zeros(len(X), dtype=int))


def test_decision_boundary_needs_a_model_of_2_features():
    model = MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="takes 3"):
        decision_boundary(model, np.zeros((4, 2)), np.zeros(4, dtype=int))


def test_decision_boundary_checks_labels_and_resolution(trained):
    model, X, y, _ = trained
    with pytest.raises(ValueError, match="one label per row"):
        decision_boundary(model, X, y[:-1])
    with pytest.raises(ValueError, match="resolution"):
        decision_boundary(model, X, y, resolution=1)
