"""Training throughput: one SGD epoch (row order) of each benchmark net (common.NETS), fastmlp
vs the NumPy reference and PyTorch, all from the same initial weights on the same batches.

One pytest-benchmark group per net; ``extra_info`` holds the samples and FLOPs of an epoch
(6·Σ in·out per sample) to turn a time into samples/s and GFLOP/s. Each timed call trains
the same model further: the work per epoch does not depend on the weights.
"""

import math

import pytest

import common


@pytest.mark.parametrize("net", [
    pytest.param(net, id=net.name, marks=pytest.mark.benchmark(group=f"train {net.name}"))
    for net in common.NETS
])
def bench_train_epoch(benchmark, net, impl):
    trainer = common.make_trainer(impl, net, common.BENCH_DTYPE)
    benchmark.extra_info.update(samples=net.n_samples, flops=net.flops_per_epoch)
    loss = benchmark(trainer.epoch)
    assert math.isfinite(loss) and loss > 0
