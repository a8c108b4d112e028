"""``fastmlp export MODEL OUT``: a saved model as an ONNX graph for onnxruntime (needs
``pip install "fastmlp[onnx]"``; the graph is fastmlp.onnx_export's).

With the sidecar ``MODEL.meta.json`` that ``fastmlp train`` writes, the graph does what
``fastmlp predict`` does around the network: its input ``X`` is the raw feature columns
(float64, in the sidecar's ``feature_names`` order), standardised inside the graph; a
regression model's ``predictions`` are in the target's units (float64); a classifier's
probability columns are the sidecar's classes, whose labels the ONNX file's metadata
(``metadata_props["classes"]``) lists. ``--raw`` exports the bare network instead
(``MLP.to_onnx``'s graph: standardised inputs in the model's dtype), as does a model without
a sidecar.
"""

from __future__ import annotations

import os

__all__ = ["add_parser", "run_export"]


def add_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="write a model as an ONNX graph (for onnxruntime)",
        description="Write MODEL (a .npz from `fastmlp train` or MLP.save) to OUT as an ONNX "
                    "graph with outputs 'probabilities' (a regression model: 'predictions') "
                    "and 'logits'. With MODEL.meta.json the graph takes the raw feature "
                    "columns (float64) and standardises them as `fastmlp predict` does; its "
                    "metadata lists the class labels. Needs pip install \"fastmlp[onnx]\".")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("out", metavar="OUT", help="the .onnx file to write")
    export.add_argument("--raw", action="store_true",
                        help="export the bare network, without the sidecar's feature and "
                             "target scaling")


def run_export(args) -> int:
    from fastmlp._tabular import DataError, check_output, describe_path, load_model, meta_path
    from fastmlp.onnx_export import record_to_onnx

    check_output(args.out, "OUT", [(args.model, "the model file itself"),
                                   (meta_path(args.model), "the model's metadata sidecar")])
    model, meta = load_model(args.model)
    options = {}
    if meta is not None:
        options = {"classes": meta.classes, "feature_names": meta.feature_names}
        if not args.raw:
            options["feature_scaling"] = (meta.scaler.mean, meta.scaler.std)
            if meta.target_scaler is not None:
                options["target_scaling"] = (meta.target_scaler.mean, meta.target_scaler.std)
    try:
        record_to_onnx(model._snapshot(), args.out, **options)
    except ImportError as exc:  # the onnx extra is not installed
        raise DataError(str(exc)) from None
    except ValueError as exc:  # e.g. a model beyond one ONNX file's 2 GiB
        raise DataError(str(exc)) from None
    scaling = "raw features, standardised in the graph" if "feature_scaling" in options \
        else "inputs as the model takes them"
    print(f"wrote {describe_path(args.out)}: {model!r}, {scaling}")
    return 0
