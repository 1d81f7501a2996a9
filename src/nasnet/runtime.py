"""Process-global state that training and search must save, restore or pin: the RNG states of
torch, numpy and Python, torch's intra-op thread count, and signal handlers."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def python_rng_state(rng: random.Random | None = None) -> list:
    """A ``random.Random``'s state (the global one by default) as nested lists, which load
    with ``torch.load(weights_only=True)``."""
    version, internal, gauss = (rng or random).getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list | tuple, rng: random.Random | None = None) -> None:
    """Inverse of :func:`python_rng_state`."""
    version, internal, gauss = state
    (rng or random).setstate((version, tuple(internal), gauss))


def numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)


def set_numpy_rng_state(state: tuple) -> None:
    kind, keys, pos, has_gauss, gauss = state
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


@contextlib.contextmanager
def module_mode(model: torch.nn.Module, training: bool) -> Iterator[torch.nn.Module]:
    """Run the block with ``model`` in training (True) or eval mode, then give every module
    back its own mode (a caller's model may mix them, e.g. a frozen head)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def signal_handlers_kept(signals: tuple[int, ...], during: Any = None) -> Iterator[None]:
    """Run the block (with ``during`` as the handler of each of ``signals``, if given), then
    give them back the handlers they had. Only the main thread can set handlers: elsewhere
    the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in signals}
    if during is not None:
        for sig in signals:
            signal.signal(sig, during)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:  # None: set outside Python, nothing to give back
                signal.signal(sig, handler)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), then restore."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def preserve_global_state() -> Iterator[None]:
    """Restore the global torch / numpy / python RNG states and torch's thread count."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    with torch_threads(None):
        try:
            yield
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])


__all__ = [
    "numpy_rng_state",
    "preserve_global_state",
    "python_rng_state",
    "set_numpy_rng_state",
    "set_python_rng_state",
    "torch_threads",
]
