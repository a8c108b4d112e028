"""Exporting a model as a standard ONNX graph, for onnxruntime and other ONNX runtimes (the
``onnx`` package is optional: it is imported only when a graph is built; ``pip install
"fastmlp[onnx]"``). ``MLP.to_onnx``, the estimators' ``to_onnx`` and ``fastmlp export`` call
``record_to_onnx``.

Legend: N samples (the graph's symbolic batch dimension ``"N"``), F features, L layers,
K outputs (classes, labels or regression targets).

The graph (opset 17, IR version 8: onnxruntime >= 1.14 runs it), every tensor in the model's
dtype (float32 or float64; onnxruntime runs both):

=======================  ===================================================================
input ``X`` (N, F)       the features, in the model's dtype
(``feature_scaling``)    ``X' = (X - mean) / std`` (``Sub``, ``Div``, then ``Cast``): the CLI's
                         standardisation, in float64 (``X`` is then float64)
layer l < L - 1          ``h = act(Gemm(h, W_l, b_l, transB=1))``: ``h W_lᵀ + b_l`` with W_l
                         (n_l, n_{l-1}) stored as it is; act is ``Relu``, ``Tanh``,
                         ``Sigmoid`` (fastmlp's "logistic"), or nothing for "identity"
last layer               ``logits = Gemm(h, W_{L-1}, b_{L-1}, transB=1)`` (N, K)
=======================  ===================================================================

Outputs, first the one ``predict_proba`` (classifiers) or ``predict`` (regression) returns,
then the logits ``MLP.forward`` returns:

- ``output="softmax"``: ``probabilities`` = ``Softmax(logits, axis=1)`` (N, K);
- ``output="sigmoid"``: ``probabilities`` = ``Concat(1 - p, p)`` (N, 2), ``p = Sigmoid(logits)``;
- ``output="multilabel"``: ``probabilities`` = ``Sigmoid(logits)`` (N, K), each label's P(1);
- ``output="identity"``: ``predictions`` = the logits (N, K) (with ``target_scaling``,
  ``logits · std + mean`` in float64, the CLI's regression targets);
- ``output="poisson"``: ``predictions`` = ``Exp(logits)`` (N, K);
- ``logits`` (N, K) last, always.

``squeeze_single_output``: a one-target regression's ``predictions`` is (N,) (a scikit-learn
regressor's ``predict``). Class labels are not computed in the graph: probability column k is
class ``classes[k]``, and ``classes`` (when given) is stored as JSON in the model's metadata
(``metadata_props["classes"]``), beside ``feature_names``, ``activation`` and ``output``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fastmlp import _core, io
from fastmlp.io import ModelRecord

__all__ = ["record_to_onnx", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8
# One protobuf message holds at most 2 GiB; keep a margin for everything but the parameters.
_MAX_PARAMETER_BYTES = 2**31 - 2**24

_HIDDEN_ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": None}


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError('ONNX export needs the onnx package, which is not installed: '
                          'pip install "fastmlp[onnx]"') from None
    return onnx, helper, numpy_helper


def _json_labels(classes) -> str:
    """classes as a JSON list (NumPy scalars as Python ones; anything else as its str)."""
    values = np.asarray(classes).tolist()
    return json.dumps(values, default=str)


def record_to_onnx(record: ModelRecord, path=None, *, classes=None, feature_names=None,
                   feature_scaling=None, target_scaling=None,
                   squeeze_single_output: bool = False):
    """The ONNX graph of ``record`` (an ``onnx.ModelProto``, checked by ``onnx.checker``),
    written atomically to ``path`` when given (see the module's docstring for the graph).

    classes: the labels of the probability columns (stored in the metadata).
    feature_names: the F input columns' names (metadata). feature_scaling: ``(mean, std)``
    (F,) each: ``X`` is then float64 raw features, standardised in float64 and cast to the
    model's dtype (as ``fastmlp predict`` does); target_scaling: ``(mean, std)`` of a
    regression target: ``predictions`` is then float64, ``value · std + mean``.
    ValueError for a model too large for one ONNX file (2 GiB)."""
    onnx, helper, numpy_helper = _onnx()
    if path is not None:
        path = _check_path(path)
    dtype = np.dtype(record.dtype)
    n_bytes = sum(w.nbytes + b.nbytes for w, b in zip(record.weights, record.biases))
    if n_bytes > _MAX_PARAMETER_BYTES:
        raise ValueError(f"the model's parameters take {n_bytes / 2**30:.2f} GiB; one ONNX file "
                         "holds at most 2 GiB")
    element = helper.np_dtype_to_tensor_dtype(dtype)
    n_features, n_outputs = record.layer_sizes[0], record.layer_sizes[-1]
    initializers, nodes = [], []

    def constant(name: str, value, of=dtype) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=of), name))
        return name

    h, input_element = "X", element
    if feature_scaling is not None:  # in float64, as the CLI standardises, then the model's
        mean, std = feature_scaling
        input_element = onnx.TensorProto.DOUBLE
        nodes.append(helper.make_node("Sub", [h, constant("feature_mean", mean, np.float64)],
                                      ["X_centred"]))
        nodes.append(helper.make_node("Div", ["X_centred",
                                              constant("feature_std", std, np.float64)],
                                      ["X_scaled"]))
        nodes.append(helper.make_node("Cast", ["X_scaled"], ["X_model"], to=element))
        h = "X_model"
    hidden_op = _HIDDEN_ACTIVATION_OPS[record.activation]
    n_layers = len(record.weights)
    for l, (w, b) in enumerate(zip(record.weights, record.biases)):
        last = l == n_layers - 1
        a = "logits" if last else f"a{l}"
        nodes.append(helper.make_node("Gemm", [h, constant(f"W{l}", w), constant(f"b{l}", b)],
                                      [a], transB=1, name=f"layer{l}"))
        h = a
        if not last and hidden_op is not None:
            h = f"h{l}"
            nodes.append(helper.make_node(hidden_op, [a], [h]))

    main = "probabilities" if record.output in ("softmax", "sigmoid", "multilabel") \
        else "predictions"
    main_shape, main_element = ["N", n_outputs], element
    if record.output == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], [main], axis=1))
    elif record.output == "multilabel":
        nodes.append(helper.make_node("Sigmoid", ["logits"], [main]))
    elif record.output == "sigmoid":  # [P(0), P(1)] = [1 - p, p], as predict_proba
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["p1"]))
        nodes.append(helper.make_node("Sub", [constant("one", 1.0), "p1"], ["p0"]))
        nodes.append(helper.make_node("Concat", ["p0", "p1"], [main], axis=1))
        main_shape = ["N", 2]
    else:
        value = "logits"
        if record.output == "poisson":
            nodes.append(helper.make_node("Exp", [value], ["mu"]))
            value = "mu"
        if target_scaling is not None:  # in float64, as the CLI maps predictions back
            mean, std = target_scaling
            main_element = onnx.TensorProto.DOUBLE
            nodes.append(helper.make_node("Cast", [value], ["value64"], to=main_element))
            nodes.append(helper.make_node("Mul", ["value64",
                                                  constant("target_std", std, np.float64)],
                                          ["scaled"]))
            nodes.append(helper.make_node("Add", ["scaled",
                                                  constant("target_mean", mean, np.float64)],
                                          ["unscaled"]))
            value = "unscaled"
        if squeeze_single_output and n_outputs == 1:
            shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape")
            initializers.append(shape)
            nodes.append(helper.make_node("Reshape", [value, "flat_shape"], [main]))
            main_shape = ["N"]
        else:
            nodes.append(helper.make_node("Identity", [value], [main]))

    graph = helper.make_graph(
        nodes, "fastmlp_mlp",
        inputs=[helper.make_tensor_value_info("X", input_element, ["N", n_features])],
        outputs=[helper.make_tensor_value_info(main, main_element, main_shape),
                 helper.make_tensor_value_info("logits", element, ["N", n_outputs])],
        initializer=initializers)
    model = helper.make_model(graph, producer_name="fastmlp", producer_version=_core.__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION,
                              doc_string=f"{record.describe()}; the graph in {dtype.name}")
    metadata = {"activation": record.activation, "output": record.output,
                "layer_sizes": json.dumps(list(record.layer_sizes))}
    if classes is not None:
        metadata["classes"] = _json_labels(classes)
    if feature_names is not None:
        metadata["feature_names"] = json.dumps(list(feature_names))
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        io.write_atomically(path, lambda f: f.write(model.SerializeToString()))
    return model


def _check_path(path) -> str:
    # Before any work, and naming the user's path (not the temporary file beside it).
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: the directory {directory!r} does not "
                                "exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a directory; expected a file name")
    return path
