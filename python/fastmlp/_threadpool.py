"""fastmlp's pool as a threadpoolctl library: ``threadpool_info()`` lists it and
``threadpool_limits(n)`` limits it, beside OpenBLAS and OpenMP. That is how scikit-learn and
joblib keep nested parallelism from oversubscribing the cores.

threadpoolctl finds libraries by scanning the loaded shared objects for a file-name prefix;
fastmlp's is ``_core.<abi>.so``, a name other packages use too, so the controller also
requires the two C symbols that fastmlp's module exports (``check_symbols``).
"""

from __future__ import annotations

from fastmlp import _core

_registered = False


def register() -> bool:
    """Registers the controller once, if threadpoolctl (>= 3.5, which has ``register``) is
    installed; returns whether fastmlp's pool is now known to threadpoolctl."""
    global _registered
    if _registered:
        return True
    try:
        import threadpoolctl
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register"):
        return False
    threadpoolctl.register(_controller_class(threadpoolctl.LibController))
    _registered = True
    return True


def _controller_class(base):
    class FastmlpController(base):
        user_api = "fastmlp"
        internal_api = "fastmlp"
        filename_prefixes = ("_core",)
        check_symbols = ("fastmlp_get_num_threads", "fastmlp_set_num_threads")

        def get_num_threads(self):
            return int(self.dynlib.fastmlp_get_num_threads())

        def set_num_threads(self, num_threads):
            # threadpool_limits passes any positive limit (or a restore to the original):
            # above fastmlp's cap it means "no tighter limit than the cap".
            _core.set_num_threads(max(1, min(int(num_threads), _core.max_num_threads())))

        def get_version(self):
            return _core.__version__

        def set_additional_attributes(self):
            self.available_cpus = _core.available_cpus()

    return FastmlpController
