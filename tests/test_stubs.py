"""The type stubs of the C++ core (python/fastmlp/_core/*.pyi) describe the built extension:
mypy's stubtest imports fastmlp._core and fastmlp._core._testing and compares every function,
class, property and constant with the stubs, both ways. Skipped without mypy (the `test`
extra installs it)."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import fastmlp

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="needs mypy (pip install fastmlp[test])")


def test_core_stubs_match_the_extension(tmp_path):
    # The stubs alone, as package `fastmlp` on MYPYPATH: mypy does not follow the editable
    # install's import hook, and refuses site-packages on MYPYPATH, so copy them out of
    # wherever the package was installed.
    stubs = tmp_path / "stubs" / "fastmlp"
    shutil.copytree(pathlib.Path(fastmlp.__file__).parent / "_core", stubs / "_core")
    (stubs / "__init__.pyi").write_text("")
    env = {**os.environ, "MYPYPATH": str(stubs.parent), "MYPY_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "fastmlp._core"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
