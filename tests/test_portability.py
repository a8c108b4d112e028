"""The default build runs on an x86-64 CPU without AVX: the whole package (kernels, engine)
under QEMU's user-mode emulation of a Westmere CPU (SSE4.2, no AVX), which raises SIGILL on
any AVX instruction. Skipped where qemu-x86_64 is not installed (Debian: qemu-user)."""

import os
import platform
import shutil
import subprocess
import sys

import pytest

QEMU = shutil.which("qemu-x86_64")

SCRIPT = """
import numpy as np, fastmlp
from fastmlp import ops
assert ops.supported_isas() == ["generic"], ops.supported_isas()
assert ops.isa() == "generic"
assert ops.supported_bf16_paths() == ["portable"] and ops.bf16_path() == "portable"
rng = np.random.default_rng(0)
for m, n, k in [(7, 13, 31), (64, 200, 300), (1, 300, 257), (300, 10, 40)]:
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            assert np.allclose(ops.matmul(a, b, ta, tb), ref, atol=1e-3), (m, n, k, ta, tb)
            bf16 = ops.matmul(a, b, ta, tb, precision="bfloat16")
            assert np.allclose(bf16, ref, atol=0.05 * np.sqrt(k)), (m, n, k, ta, tb)
X = rng.standard_normal((500, 8)); y = (X[:, 0] * X[:, 1] > 0).astype(int)
model = fastmlp.MLP([8, 32, 2], seed=0)
model.fit(X, y, epochs=20, optimizer=fastmlp.Adam(lr=0.01), seed=0)
assert model.score(X, y) > 0.9
print("ok")
"""


@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64 (Debian: qemu-user) on x86-64")
def test_runs_on_a_cpu_without_avx():
    # OPENBLAS_CORETYPE (set on some machines, e.g. =Haswell) forces NumPy's OpenBLAS to an
    # AVX2 kernel, which dies on the emulated CPU before fastmlp is even imported.
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "FASTMLP_ISA")}
    result = subprocess.run([QEMU, "-cpu", "Westmere", sys.executable, "-c", SCRIPT],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.returncode, result.stderr[-3000:])
