"""CPU detection and the SIMD flavour (src/cpp/cpu.*): which flavours this CPU runs and which
one is active (ops.supported_isas, ops.isa), choosing one in-process (ops.set_isa) or at
import with FASTMLP_ISA (in a fresh process), and the errors for names that are unknown or
that this CPU cannot run. Each flavour's kernels are checked in test_gemm.py."""

import numpy as np
import pytest

from fastmlp import ops
from _helpers import ON_EVERY_ISA_AND_THREAD_COUNT, run_python


@ON_EVERY_ISA_AND_THREAD_COUNT
def test_isa_is_known_and_supported():
    supported = ops.supported_isas()
    assert isinstance(supported, list)
    assert "generic" in supported
    assert set(supported) <= {"generic", "avx2", "avx512"}
    assert ops.isa() in ("generic", "avx2", "avx512")
    assert ops.isa() in supported


@pytest.mark.parametrize("isa_name", ["generic", "avx2", "avx512"])
def test_fastmlp_isa_forces_a_flavour(isa_name):
    code = "import fastmlp, numpy as np; print(fastmlp.ops.isa()); " \
           "a = np.arange(12.0).reshape(3, 4); print(float(fastmlp.ops.matmul(a, a.T).sum()))"
    result = run_python(code, {"FASTMLP_ISA": isa_name})
    if isa_name in ops.supported_isas():
        assert result.returncode == 0, result.stderr
        name, total = result.stdout.split()
        a = np.arange(12.0).reshape(3, 4)
        assert name == isa_name and float(total) == (a @ a.T).sum()
    else:
        assert result.returncode != 0 and "does not support" in result.stderr


def test_unknown_fastmlp_isa_is_an_import_error():
    result = run_python("import fastmlp", {"FASTMLP_ISA": "sse9"})
    assert result.returncode != 0
    assert "FASTMLP_ISA" in result.stderr and "expected one of generic, avx2, avx512" in result.stderr


def test_set_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown ISA"):
        ops.set_isa("neon9")
