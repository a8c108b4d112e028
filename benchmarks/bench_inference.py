"""Inference throughput: ``predict_proba`` of the mnist-shaped and wide nets at batch 1, 32 and
256, fastmlp (float32, bfloat16 products, int8 when ``MLP.quantize`` exists) vs onnxruntime
(float32 and dynamic int8 of the exported graph) and PyTorch eager, one thread, the Python
call included (inference.py has the runners; compare.py --only inference the table).

One pytest-benchmark group per net and batch; ``extra_info['flops']`` (2·Σ in·out·batch)
turns a time into GFLOP/s. An implementation that is not installed (onnxruntime, torch) or
not in this fastmlp (int8) is skipped. Every call's probabilities are checked against
fastmlp's float32 ones (1e-5; 0.05 for bfloat16 and int8).
"""

import pytest

import common
import inference


@pytest.mark.parametrize("impl", inference.IMPLEMENTATIONS)
@pytest.mark.parametrize("net_name, batch", [
    pytest.param(net, batch, id=f"{net}-b{batch}",
                 marks=pytest.mark.benchmark(group=f"inference {net} batch {batch}"))
    for net in inference.NETS for batch in inference.BATCHES
])
def bench_predict_proba(benchmark, net_name, batch, impl):
    found = inference.runners(net_name, batch)
    if impl not in found:
        pytest.skip(f"{impl}: not installed, or not in this fastmlp")
    run, reduced = found[impl]
    benchmark.extra_info.update(flops=inference.flops(common.NET_BY_NAME[net_name], batch))
    probabilities = benchmark(run)
    reference = found["fastmlp"][0]()
    assert inference.check(impl, reduced, probabilities, reference) is None
