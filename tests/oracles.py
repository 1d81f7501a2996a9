"""The published PyTorch ports of NASNet-A as test oracles.

timm and Cadene's ``pretrainedmodels`` are installed on demand without their dependencies
(the registry's torchvision is a CUDA build that would replace the CPU torch), into a cache
folder outside site-packages; torchvision is replaced by an inert stub, which the NASNet code
paths never call. Nothing is downloaded at run time beyond the packages themselves, and no
weights at all: the models are built with random weights.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types

import pytest

CACHE = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "oracles")
PACKAGES = ("timm==1.0.31", "pretrainedmodels==0.7.4")


def _ensure_installed() -> str:
    target = os.path.abspath(CACHE)
    marker = os.path.join(target, ".installed-" + "-".join(PACKAGES))
    if not os.path.exists(marker):
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
             *PACKAGES],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"cannot install the oracle ports: {proc.stderr.strip()[-300:]}")
        open(marker, "w").close()
    return target


class _Stub(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        class _Meta(type):
            def __getattr__(cls, attr):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return attr

        return _Meta(name, (object,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def timm_module():
    target = _ensure_installed()
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())
    if target not in sys.path:
        sys.path.insert(0, target)
    import timm

    return timm


def cadene_module(name: str):
    """Load ``pretrainedmodels/models/<name>.py`` alone (its package imports much more)."""
    target = _ensure_installed()
    path = os.path.join(target, "pretrainedmodels", "models", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cadene_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
