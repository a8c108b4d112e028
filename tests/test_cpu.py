"""CPU detection and the SIMD flavour (src/cpp/cpu.*): which flavours this CPU runs and which
one is active (ops.supported_isas, ops.isa), choosing one in-process (ops.set_isa) or at
import with FASTMLP_ISA (in a fresh process), and the errors for names that are unknown or
that this CPU cannot run. Each flavour's kernels are checked in test_gemm.py.
The data caches (src/cpp/cpu_cache.*, ops.cache_sizes): detected sizes are plausible, the
FASTMLP_CACHE_SIZES override changes them and the cache blocks derived from them (fresh
processes), and a bad override is an import error that names the key. GEMMs under overridden
caches: test_gemm.py."""

import json

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


# ---- data caches -----------------------------------------------------------------------------

def test_detected_cache_sizes_are_plausible():
    c = ops.cache_sizes()
    assert c["source"].split("+")[0] in ("cpuid", "sysfs", "default")
    assert 16 << 10 <= c["l1d"] <= c["l2"] <= 1 << 30
    assert c["l3"] == 0 or c["l2"] <= c["l3"] <= 8 << 30
    assert c["line"] in (32, 64, 128, 256)
    assert c["l1d_ways"] >= 1 and c["l2_ways"] >= 1 and c["l3_ways"] >= 1
    assert c["l3_sharing"] >= 1


def test_cache_blocks_are_multiples_of_the_register_tile():
    for dtype in ("float32", "float64"):
        g = ops.gemm_config(dtype)
        assert g["KC"] >= 16 and g["MC"] % g["MR"] == 0 and g["NC"] % g["NR"] == 0
        assert g["MC"] >= g["MR"] and g["NC"] >= g["NR"]


_CONFIG_SCRIPT = """
import json
from fastmlp import ops
print(json.dumps({"caches": ops.cache_sizes(), "float32": ops.gemm_config("float32"),
                  "float64": ops.gemm_config("float64")}))
"""


def _config_under(spec, isa=None):
    env = {"FASTMLP_CACHE_SIZES": spec}
    if isa:
        env["FASTMLP_ISA"] = isa
    result = run_python(_CONFIG_SCRIPT, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cache_override_sets_the_sizes_and_keeps_the_rest():
    got = _config_under("l1d=32K, l2=1M,l3=32M,l3_sharing=8")["caches"]
    detected = ops.cache_sizes()
    assert (got["l1d"], got["l2"], got["l3"], got["l3_sharing"]) == (32 << 10, 1 << 20, 32 << 20, 8)
    assert got["line"] == detected["line"] and got["l1d_ways"] == detected["l1d_ways"]
    assert got["source"] == detected["source"] + "+FASTMLP_CACHE_SIZES"


@pytest.mark.parametrize("isa_name", ["generic", "avx2", "avx512"])
def test_cache_override_changes_the_blocks(isa_name):
    if isa_name not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa_name}")
    tiny = _config_under("l1d=4K,l1d_ways=8,l2=16K,l3=64K,l3_sharing=1", isa_name)
    large = _config_under("l1d=48K,l1d_ways=12,l2=2M,l3=64M,l3_sharing=1", isa_name)
    for dtype in ("float32", "float64"):
        small, big = tiny[dtype], large[dtype]
        assert (small["MR"], small["NR"]) == (big["MR"], big["NR"])
        assert small["KC"] < big["KC"] and small["NC"] < big["NC"]
        # The A block stays within L2, the B block within L3 (KC at its floor of 16 aside).
        size = np.dtype(dtype).itemsize
        assert small["MC"] * small["KC"] * size <= 16 << 10 or small["MC"] == small["MR"]
        assert big["MC"] * big["KC"] * size <= 2 << 20
        assert big["KC"] * big["NC"] * size <= 64 << 20


def test_avx512_blocks_reproduce_the_tuned_ones_on_a_zen5_like_cache():
    # The constants measured on a Zen 5 (kernels/avx512/): what the model must give there.
    if "avx512" not in ops.supported_isas():
        pytest.skip("this CPU does not run avx512")
    got = _config_under("l1d=48K,l1d_ways=12,l2=1M,l2_ways=16,l3=32M,l3_sharing=2,line=64",
                        "avx512")
    assert {k: got["float32"][k] for k in ("MC", "KC", "NC")} == {"MC": 240, "KC": 768, "NC": 4096}
    assert {k: got["float64"][k] for k in ("MC", "KC", "NC")} == {"MC": 120, "KC": 768, "NC": 2048}


@pytest.mark.parametrize("spec, message", [
    ("l1d=32Q", "not a size"),
    ("l4=1M", "unknown key 'l4'"),
    ("l1d", "is not key=value"),
    ("l1d=", "not a size"),
    ("l2=1K", "l2 must be at least l1d"),
    ("l1d=512", "l1d must be at least 1K"),
    ("l3=64K", "l3 must be 0 (none) or at least l2"),
    ("line=48", "line must be a power of two"),
    ("l1d_ways=0", "whole number from 1 to 4096"),
    ("l3_sharing=2K", "whole number from 1 to 4096"),
    ("l1d=9999999999K", "not a size"),
    ("l3=64G", "more than 16G"),
    (",", "no key=value given"),
])
def test_bad_cache_override_is_an_import_error(spec, message):
    result = run_python("import fastmlp", {"FASTMLP_CACHE_SIZES": spec})
    assert result.returncode != 0
    assert "FASTMLP_CACHE_SIZES" in result.stderr and message in result.stderr, result.stderr
