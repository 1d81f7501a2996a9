"""nasnet: NASNet-style neural architecture search in PyTorch.

The names below are imported on first use (PEP 562), so that ``import nasnet`` - and the
``nasnet`` command, whose first act is to import this package - does not load torch before it
can handle a Ctrl-C.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "count_mult_adds": "nasnet.counting",
    "count_params": "nasnet.counting",
    "GENOTYPES": "nasnet.genotypes",
    "NASNET_A": "nasnet.genotypes",
    "NASNet": "nasnet.network",
    "NetworkConfig": "nasnet.network",
    "build_network": "nasnet.network",
    "load_pretrained": "nasnet.pretrained",
    "create_model": "nasnet.registry",
    "list_models": "nasnet.registry",
    "COMBINES": "nasnet.space",
    "OPS": "nasnet.space",
    "Block": "nasnet.space",
    "Cell": "nasnet.space",
    "Genotype": "nasnet.space",
    "GenotypeError": "nasnet.space",
    "SearchSpace": "nasnet.space",
    "load_genotype": "nasnet.space",
}

__all__ = [
    "COMBINES",
    "GENOTYPES",
    "NASNET_A",
    "OPS",
    "Block",
    "Cell",
    "Genotype",
    "GenotypeError",
    "NASNet",
    "NetworkConfig",
    "SearchSpace",
    "build_network",
    "count_mult_adds",
    "count_params",
    "create_model",
    "list_models",
    "load_genotype",
    "load_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"nasnet.{name}") is not None:
        value = importlib.import_module(f"nasnet.{name}")  # nasnet.ops, nasnet.train, ...
    else:
        raise AttributeError(f"module 'nasnet' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
