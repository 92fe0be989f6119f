"""Every numba kernel masklab owns keeps its compiled code on disk (`cache=True`), so that no process after
the first (or after `python -m masklab.warm`) compiles it again."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

numba = pytest.importorskip("numba")

import masklab  # noqa: E402


def masklab_dispatchers():
    from numba.core.registry import CPUDispatcher

    found = {}
    for info in pkgutil.walk_packages(masklab.__path__, "masklab."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.py_func.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_kernel_we_own_is_cached_on_disk():
    from numba.core.caching import NullCache

    kernels = masklab_dispatchers()
    assert "masklab.analysis._numba_kernels.intersect_blocks" in kernels
    assert any(name.startswith("masklab.nn.select.") for name in kernels)
    uncached = [name for name, d in kernels.items()
                if isinstance(d._cache, NullCache) and d.targetoptions.get("inline") != "always"]
    assert not uncached, f"numba kernels without cache=True: {uncached}"
