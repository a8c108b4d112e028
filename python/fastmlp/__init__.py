"""fastmlp: fast multilayer perceptrons on the CPU, on C++ kernels."""

from fastmlp import _threadpool, ops
from fastmlp._core import __version__
from fastmlp._data_sources import ParquetSource
from fastmlp._distributed import shard_rows
from fastmlp._threads import get_num_threads, set_num_threads
from fastmlp.model import MLP, History
from fastmlp.optim import SGD, Adam, AdamW
from fastmlp.quantized import QuantizedMLP

__all__ = ["MLP", "History", "QuantizedMLP", "SGD", "Adam", "AdamW", "ops", "get_num_threads",
           "set_num_threads", "__version__", "MLPClassifier", "MLPRegressor", "ParquetSource",
           "shard_rows"]


_threadpool.register()  # threadpoolctl sees and limits fastmlp's pool, when it is installed


def __getattr__(name):
    # fastmlp.estimators imports scikit-learn when it is installed (about a second): load it
    # on first use of the estimators, not with every `import fastmlp`.
    if name in ("MLPClassifier", "MLPRegressor"):
        from fastmlp import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
