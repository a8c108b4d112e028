"""scikit-learn's own MLP tests (sklearn/neural_network/tests/test_mlp.py of the installed
scikit-learn) run against fastmlp's estimators: the file is copied with its import of
``MLPClassifier, MLPRegressor`` pointed at fastmlp, run in a subprocess, and every test must
pass but the exceptions listed here, each with its reason. An exception that passes fails this
test too, so the lists only ever hold tests that still fail."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

UPSTREAM = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
UPSTREAM_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"

# Tests of scikit-learn's private internals, which fastmlp's estimators do not have (their
# training runs in the C++ engine). (test_gradient could not pass in float32 anyway: central
# differences of step 1e-5 checked to 7 decimals are rounding noise there.)
READS_SKLEARN_INTERNALS = {
    "test_gradient": "calls the private MLPClassifier._loss_grad_lbfgs with scikit-learn's "
                     "activations/deltas/grads buffers and compares it to numerical gradients",
}

# fastmlp trains in its dtype parameter, float32 by default, whatever X's dtype; predictions
# come in X's dtype as scikit-learn's. Only the float64 cases.
FLOAT32_DEFAULT = {
    "test_mlp_param_dtypes[MLPClassifier-float64]": "asserts coefs_/intercepts_ are float64 "
                                                    "after a fit on float64 X",
    "test_mlp_param_dtypes[MLPRegressor-float64]": "asserts coefs_/intercepts_ are float64 "
                                                   "after a fit on float64 X",
}

EXCEPTIONS = {**READS_SKLEARN_INTERNALS, **FLOAT32_DEFAULT}

# scikit-learn's conftest provides global_random_seed (42 unless SKLEARN_TESTS_GLOBAL_RANDOM_SEED
# asks for others); the copy, outside its package, gets the default from a conftest of its own.
CONFTEST = """\
import pytest


@pytest.fixture(params=[42])
def global_random_seed(request):
    return request.param
"""


def _run_upstream(tmp_path: Path) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped"} of the upstream file run on fastmlp."""
    source = UPSTREAM.read_text()
    assert source.count(UPSTREAM_IMPORT) == 1, "the upstream import line changed"
    source = source.replace(UPSTREAM_IMPORT,
                            "from fastmlp.estimators import MLPClassifier, MLPRegressor")
    (tmp_path / "test_mlp.py").write_text(source)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"--rootdir={tmp_path}", "-c", os.devnull, f"--junitxml={report}", "test_mlp.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert report.exists(), process.stdout + process.stderr
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
        elif case.find("skipped") is not None:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    assert outcomes, process.stdout + process.stderr
    return outcomes


def _matches(test_id: str, key: str) -> bool:
    """Whether an exception key names this test: the full id, or the function name for every
    parametrization of it."""
    return test_id == key or re.sub(r"\[.*\]$", "", test_id) == key


def test_sklearn_upstream_mlp_tests_pass(tmp_path):
    if not UPSTREAM.exists():
        pytest.skip(f"scikit-learn {sklearn.__version__} ships without {UPSTREAM.name}")
    outcomes = _run_upstream(tmp_path)
    excepted = {t for t in outcomes if any(_matches(t, k) for k in EXCEPTIONS)}
    problems = {
        "upstream tests failing on fastmlp (fix them)": sorted(
            t for t, o in outcomes.items() if o != "passed" and t not in excepted),
        "excepted tests that pass now (remove them from the exceptions)": sorted(
            t for t in excepted if outcomes[t] == "passed"),
        "exceptions naming no upstream test (renamed or removed upstream?)": sorted(
            k for k in EXCEPTIONS if not any(_matches(t, k) for t in outcomes)),
    }
    assert not any(problems.values()), {what: tests for what, tests in problems.items() if tests}
