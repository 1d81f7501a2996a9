"""Kernels compiled for this machine on first use: where oneDNN's CPU kernels are slow on the
shapes NASNet children have.

The C++ sources ship with the package (``*.cpp`` here); the first call compiles them with
the system's C++ compiler (``$CXX``, else ``c++``) for the vector instructions torch itself
dispatches to here (``torch.backends.cpu.get_cpu_capability()``), with OpenMP where the
compiler has it, and keeps the library in ``$NASNET_CACHE_DIR`` (default
``$XDG_CACHE_HOME/nasnet``, else ``~/.cache/nasnet``) under a name that hashes the source,
compiler, flags and CPU capability, so machines sharing a home directory never load each
other's builds (where that folder cannot be written, in a folder of the user's under the temp
directory). Processes that compile at once each write their own file and rename it into
place. Where there is no compiler, compiling fails, or ``NASNET_NATIVE=0`` is set,
:func:`library` returns ``None`` and callers keep their PyTorch path;
:func:`unavailable_reason` says why.

Loaded after torch, an OpenMP build shares torch's OpenMP runtime (the same ``libgomp.so.1``)
and so its threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_lock = threading.Lock()
_state: dict[str, object] = {}


def library() -> ctypes.CDLL | None:
    """The compiled kernels, compiling them on first use; ``None`` where they cannot be had."""
    if "library" not in _state:
        with _lock:
            if "library" not in _state:
                _state["library"], _state["reason"] = _load()
    return _state["library"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (one line), or ``None`` where it loaded."""
    library()
    return _state["reason"]  # type: ignore[return-value]


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    if os.environ.get("NASNET_CACHE_DIR"):
        return Path(os.environ["NASNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nasnet"


def depthwise_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride, padding
) -> torch.Tensor | None:
    """The weight gradient (C, 1, kh, kw) of the depthwise convolution of ``x`` (float32,
    channels_last, N x C x H x W) with top/left ``padding``, given ``grad``, the gradient of
    its output; ``None`` where the kernels are unavailable."""
    lib = library()
    if lib is None:
        return None
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    n, c, height, width = x.shape
    out_h, out_w = grad.shape[2:]
    kh, kw = kernel
    out = torch.empty(kh, kw, c, dtype=torch.float32)
    threads = _threads(n * out_h * out_w * kh * kw * -(-c // 16), PARALLEL_MIN_WORK)
    lib.nasnet_depthwise_weight_grad_f32(
        x.data_ptr(), grad.data_ptr(), out.data_ptr(), n, c, height, width, out_h, out_w,
        kh, kw, stride[0], stride[1], padding[0], padding[1], threads,
    )  # fmt: skip
    return out.permute(2, 0, 1).unsqueeze(1)


def depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, stride, padding, out_size, flip: bool = False
) -> torch.Tensor | None:
    """The depthwise convolution of ``x`` (float32, channels_last) with ``weight`` (C, 1, kh,
    kw; rotated half a turn where ``flip``) and top/left ``padding``, ``out_size`` (H, W)
    pixels; ``None`` where the kernels are unavailable or have no loop for this kernel width
    or stride (3, 5 or 7 columns; stride 1 or 2 along the width)."""
    lib = library()
    if lib is None:
        return None
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous()
    n, c, height, width = x.shape
    kh, kw = weight.shape[2:]
    out = torch.empty(n, c, *out_size, memory_format=torch.channels_last)
    threads = _threads(n * out_size[0] * out_size[1] * kh * kw * -(-c // 16), PARALLEL_MIN_WORK)
    failed = lib.nasnet_depthwise_conv_f32(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), n, c, height, width, *out_size,
        kh, kw, stride[0], stride[1], padding[0], padding[1], int(flip), threads,
    )  # fmt: skip
    return None if failed else out


def batch_norm_forward(x: torch.Tensor, weight, bias, eps: float, running_mean, running_var,
                       factor: float):  # fmt: skip
    """Training-mode BatchNorm of ``x`` (float32, channels_last; ``weight``, ``bias`` and
    the running statistics contiguous, one float32 value per channel): (y, batch mean,
    1 / sqrt(biased batch variance + eps)), the running mean and (unbiased) variance moved
    ``factor`` of the way to the batch's in place; ``None`` where the kernels are
    unavailable."""
    lib = library()
    if lib is None:
        return None
    x = x.contiguous(memory_format=torch.channels_last)
    channels = x.shape[1]
    y = torch.empty_like(x, memory_format=torch.channels_last)
    stats = torch.empty(2, channels)
    lib.nasnet_batch_norm_forward_f32(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), eps, x.numel() // channels, channels,
        y.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), running_mean.data_ptr(),
        running_var.data_ptr(), factor, _threads(x.numel()),
    )  # fmt: skip
    return y, stats[0], stats[1]


def batch_norm_backward(grad, x, weight, mean, invstd):
    """The gradients (x, weight, bias) of :func:`batch_norm_forward` given ``grad``, its
    output's, and the forward's ``mean`` and ``invstd``; ``None`` where the kernels are
    unavailable."""
    lib = library()
    if lib is None:
        return None
    grad = grad.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    channels = x.shape[1]
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    grads = torch.empty(2, channels)
    lib.nasnet_batch_norm_backward_f32(
        grad.data_ptr(), x.data_ptr(), weight.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
        x.numel() // channels, channels, grad_x.data_ptr(), grads[0].data_ptr(),
        grads[1].data_ptr(), _threads(x.numel()),
    )  # fmt: skip
    return grad_x, grads[0], grads[1]


def pointwise(x: torch.Tensor, weight: torch.Tensor, transposed: bool = False):
    """The 1x1 convolution of ``x`` (float32, channels_last, N x K x H x W) with ``weight``
    (M x K; where ``transposed``, K x M, applied as its transpose): N x M x H x W,
    channels_last; ``None`` where the kernels are unavailable or M > 128."""
    lib = library()
    if lib is None:
        return None
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.detach().contiguous()
    n, k, height, width = x.shape
    m = weight.shape[0] if not transposed else weight.shape[1]
    out = torch.empty(n, m, height, width, memory_format=torch.channels_last)
    pixels = n * height * width
    failed = lib.nasnet_pointwise_f32(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), pixels, k, m, int(transposed),
        _threads(pixels * k * m, POINTWISE_PARALLEL_MIN_PRODUCTS),
    )  # fmt: skip
    return None if failed else out


def _threads(amount: int, minimum: int | None = None) -> int:
    """torch's thread count for a pass over ``amount`` elements (or vector products, against
    ``minimum``); one thread below the minimum."""
    enough = amount >= (PARALLEL_MIN_ELEMENTS if minimum is None else minimum)
    return torch.get_num_threads() if enough else 1


#: Maps of fewer elements make one pass on one thread.
PARALLEL_MIN_ELEMENTS = 2**16
#: Below this many vector products (pixels x taps x 16-channel blocks) one thread sums the
#: gradient: waking the others costs more than it saves.
PARALLEL_MIN_WORK = 2**16


#: Below this many multiply-adds one thread runs a 1x1 convolution (two threads pay from
#: about 10^5 on 2x2-8x8 maps of 20-80 channels, batch 32).
POINTWISE_PARALLEL_MIN_PRODUCTS = 2**18


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("NASNET_NATIVE", "1") == "0":
        return None, "NASNET_NATIVE=0"
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return None, f"no C++ compiler ({os.environ.get('CXX', 'c++')} not found)"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", *_ARCH_FLAGS.get(capability, [])]
    errors = []
    for extra in (["-fopenmp"], []):  # without OpenMP where the compiler has none
        path = _built(compiler, [*flags, *extra], capability, errors)
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                errors.append(f"loading {path}: {err}")
                continue
            _declare(lib)
            return lib, None
    return None, "compiling the native kernels failed: " + (errors[-1] if errors else "?")


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn = lib.nasnet_depthwise_weight_grad_f32
    fn.argtypes = [ptr, ptr, ptr] + [i64] * 13
    fn.restype = ctypes.c_int
    fn = lib.nasnet_depthwise_conv_f32
    fn.argtypes = [ptr, ptr, ptr] + [i64] * 14
    fn.restype = ctypes.c_int
    fn = lib.nasnet_batch_norm_forward_f32
    fn.argtypes = [ptr, ptr, ptr, ctypes.c_double, i64, i64, ptr, ptr, ptr, ptr, ptr,
                   ctypes.c_double, i64]  # fmt: skip
    fn.restype = ctypes.c_int
    fn = lib.nasnet_pointwise_f32
    fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64]
    fn.restype = ctypes.c_int
    fn = lib.nasnet_batch_norm_backward_f32
    fn.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, ptr, ptr, ptr, i64]
    fn.restype = ctypes.c_int


def _built(compiler: str, flags: list[str], capability: str, errors: list[str]) -> Path | None:
    """The library built with ``flags``, compiled now unless the cache has it."""
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
        ).stdout.splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired) as err:
        errors.append(f"{compiler} --version: {err}")
        return None
    texts = [f.read_text() for f in (*SOURCES, *HEADERS)]
    parts = [*texts, compiler, *version, *flags, capability]
    key = hashlib.sha256("\n".join([*parts, platform.machine()]).encode()).hexdigest()[:16]
    name = f"kernels-{key}.so"
    for folder in _cache_folders():
        if (folder / name).exists():
            return folder / name
        scratch = _scratch_file(folder, errors)
        if scratch is not None:
            break
    else:
        return None
    command = [compiler, *flags, *map(str, SOURCES), "-o", scratch]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        os.unlink(scratch)
        errors.append(f"{' '.join([compiler, *flags])}: {err}")
        return None
    if done.returncode != 0:
        os.unlink(scratch)
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        errors.append(f"{' '.join([compiler, *flags])}: {last}")
        return None
    os.replace(scratch, folder / name)
    return folder / name


def _cache_folders() -> list[Path]:
    """The cache, then (where that cannot be written) a folder of this user's in the temp dir."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return [cache_dir() / "native", Path(tempfile.gettempdir()) / f"nasnet-native-{uid}"]


def _scratch_file(folder: Path, errors: list[str]) -> str | None:
    """A new empty file in ``folder`` to compile into, or ``None`` (the reason in errors)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(suffix=".so", dir=folder)
    except OSError as err:
        errors.append(f"cannot write to {folder}: {err}")
        return None
    os.close(fd)
    return scratch
