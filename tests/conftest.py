import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

# The test models are tiny: one thread avoids oversubscription when the suite shares the
# two CI cores with subprocesses, and keeps timings steady.
torch.set_num_threads(1)

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")


@contextmanager
def bench_module(name: str) -> Iterator[ModuleType]:
    """``bench/NAME.py`` imported as the module ``NAME``, so that the worker processes it
    spawns can import it too (the bench folder is on ``sys.path`` meanwhile)."""
    sys.path.insert(0, BENCH)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)
        for module in ("search_quality", "weight_sharing", "vs_timm"):
            sys.modules.pop(module, None)
