"""GEMM throughput: fastmlp.ops.matmul vs numpy.matmul and torch.mm, on the 1024³ square and
on the three products of each benchmark net's largest layer (common.GEMM_CASES); and
fastmlp's bfloat16 GEMM (``precision="bfloat16"``, float32 operands) in the same groups
(bf16_vs_peers.py compares it with torch's autocast).

One pytest-benchmark group per shape; ``extra_info['flops']`` = 2·M·N·K turns a time into
GFLOP/s. compare.py prints the same measurements as one table.
"""

import pytest

import common
import fastmlp


@pytest.mark.parametrize("gemm", [
    pytest.param(gemm, id=gemm.id, marks=pytest.mark.benchmark(group=f"gemm {gemm.id}"))
    for gemm in common.GEMM_CASES
])
def bench_matmul(benchmark, gemm, impl):
    run = common.gemm_runner(impl, gemm, common.BENCH_DTYPE)
    benchmark.extra_info["flops"] = gemm.flops
    product = benchmark(run)
    assert tuple(product.shape) == (gemm.m, gemm.n)


@pytest.mark.parametrize("gemm", [
    pytest.param(gemm, id=gemm.id, marks=pytest.mark.benchmark(group=f"gemm {gemm.id}"))
    for gemm in common.GEMM_CASES
])
def bench_matmul_bf16(benchmark, gemm):
    a, b = gemm.operands("float32")
    benchmark.extra_info["flops"] = gemm.flops
    product = benchmark(fastmlp.ops.matmul, a, b, gemm.trans_a, gemm.trans_b,
                        precision="bfloat16")
    assert product.shape == (gemm.m, gemm.n) and product.dtype == "float32"
