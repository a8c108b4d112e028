"""Read-only views of a model's parameter arrays, and the one way around them for in-place
updaters (``Optimizer.step``): the model keeps a packed copy of its weights for inference
(``MLP.packed_nbytes``), so every change of a weight must reach the model. Assignment does;
an in-place write into a view raises; ``Optimizer.step`` given a view writes into the model's
own array and tells the model (which drops its packed copy)."""

from __future__ import annotations

import weakref

import numpy as np

# id(view) -> (weak reference to the view, the model's writable array, the callback that tells
# the model it changed); an entry goes when its view does (arrays are unhashable, so no
# WeakKeyDictionary).
_OWNERS: dict[int, tuple] = {}


def read_only_alias(array: np.ndarray) -> np.ndarray:
    """``array``'s memory (same shape and strides) seen through a read-only buffer: unlike a
    plain view flagged read-only, neither it nor any view of it can be flagged writeable again
    (NumPy allows ``view.flags.writeable = True`` on a view of a writeable array, and a write
    through it would bypass the model's packed copy)."""
    return np.asarray(memoryview(array).toreadonly())


def read_only_view(array: np.ndarray, changed, alias: np.ndarray | None = None,
                   holds=None) -> np.ndarray:
    """A read-only view of ``array`` (through ``alias``, its ``read_only_alias``, when the
    caller keeps one); ``writable_target`` maps it back (with ``changed``) while ``holds()``
    (None: always) says the owner still holds ``array``."""
    view = (read_only_alias(array) if alias is None else alias).view()
    key = id(view)
    _OWNERS[key] = (weakref.ref(view, lambda _: _OWNERS.pop(key, None)), array, changed, holds)
    return view


def writable_target(p: np.ndarray):
    """``(array to update in place, callback to run after)`` for p: p itself (no callback)
    unless p is a model's read-only parameter view."""
    entry = _OWNERS.get(id(p)) if not p.flags.writeable else None
    if entry is None or entry[0]() is not p:
        return p, None
    _, array, changed, holds = entry
    if holds is not None and not holds():
        # The update would go into an array the model dropped: silently lost.
        raise ValueError("a parameter view is of an array its model no longer holds (the "
                         "model's weights or biases were assigned since the view was taken); "
                         "pass model.weights + model.biases afresh")
    return array, changed
