"""pytest setup for benchmarks/: every implementation single-threaded, an ``impl`` fixture over
fastmlp and its peers (torch ones skip without torch), and the machine in the report header."""

import pytest

import common


def pytest_report_header(config):
    return common.environment_report()


@pytest.fixture(scope="session", autouse=True)
def _single_threaded():
    with common.single_threaded():
        yield


@pytest.fixture(params=common.IMPLEMENTATIONS)
def impl(request) -> str:
    """The implementation under test: "fastmlp", "numpy" or "torch"."""
    if request.param == "torch":
        pytest.importorskip("torch")
    return request.param
