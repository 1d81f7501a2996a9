"""The kernels of ``nasnet.native``: compiled on first use, equal to PyTorch's gradients, and
left out cleanly where they cannot be had."""

import copy
import itertools
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from nasnet import native, ops

HAVE_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler here")


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """``nasnet.native`` as in a new process, with an empty cache of its own."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("NASNET_CACHE_DIR", str(tmp_path))
    return tmp_path


def reference_weight_grad(grad, x, kernel, stride, padding):
    """float64 autograd through an explicitly padded copy: top/left ``padding``, and as many
    zero rows/columns at the bottom/right as ``grad``'s size implies."""
    (kh, kw), (sh, sw), (pt, pl) = kernel, stride, padding
    oh, ow = grad.shape[2:]
    bottom = max(0, (oh - 1) * sh + kh - (x.shape[2] + pt))
    right = max(0, (ow - 1) * sw + kw - (x.shape[3] + pl))
    padded = F.pad(x.double(), (pl, right, pt, bottom))
    weight = torch.zeros(x.shape[1], 1, kh, kw, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(padded, weight, None, stride, 0, 1, x.shape[1])[:, :, :oh, :ow]
    assert y.shape == grad.shape
    return torch.autograd.grad(y, weight, grad.double())[0]


@needs_compiler
@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("channels", [1, 12, 17, 24, 36])
def test_depthwise_weight_grad_equals_pytorch(kernel, channels):
    torch.manual_seed(kernel * 100 + channels)
    cases = itertools.product(((1, 1), (2, 2), (1, 2)), ((0, 0), (1, 2), (kernel // 2,) * 2))
    for (stride, padding), size in itertools.product(cases, [(7, 9), (16, 16)]):
        x = torch.randn(3, channels, *size).to(memory_format=torch.channels_last)
        oh = (size[0] + 2 * padding[0] - kernel) // stride[0] + 1
        ow = (size[1] + 2 * padding[1] - kernel) // stride[1] + 1
        grad = torch.randn(3, channels, oh, ow).to(memory_format=torch.channels_last)
        want = reference_weight_grad(grad, x, (kernel, kernel), stride, padding)
        for threads in (1, 2):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                got = native.depthwise_weight_grad(grad, x, (kernel, kernel), stride, padding)
            finally:
                torch.set_num_threads(previous)
            assert got.shape == want.shape
            err = (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())
            assert err < 1e-5, f"stride {stride} padding {padding} {size} threads {threads}"


@needs_compiler
@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("channels", [1, 12, 17, 24, 36])
def test_depthwise_conv_equals_pytorch(kernel, channels):
    """The output, and (rotated kernel) the input gradient of a stride-1 convolution."""
    torch.manual_seed(kernel * 100 + channels)
    weight = torch.randn(channels, 1, kernel, kernel)
    cases = itertools.product(((1, 1), (2, 2), (1, 2)), ((0, 0), (1, 2), (kernel // 2,) * 2))
    for (stride, padding), size in itertools.product(cases, [(7, 9), (16, 16)]):
        x = torch.randn(3, channels, *size).to(memory_format=torch.channels_last)
        out_size = tuple(
            (s + 2 * p - kernel) // st + 1 for s, p, st in zip(size, padding, stride, strict=True)
        )
        y = F.conv2d(x.double(), weight.double(), None, stride, padding, 1, channels)
        grad = torch.randn_like(y)
        for threads in (1, 2):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                got = native.depthwise_conv(x, weight, stride, padding, out_size)
                if stride == (1, 1):
                    flipped = (kernel - 1 - padding[0], kernel - 1 - padding[1])
                    dx = native.depthwise_conv(grad.float(), weight, stride, flipped, size, True)
            finally:
                torch.set_num_threads(previous)
            where = f"stride {stride} padding {padding} {size} threads {threads}"
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert (got.double() - y).abs().max().item() < 1e-5 * max(1.0, y.abs().max()), where
            if stride == (1, 1):
                x64 = x.double().requires_grad_(True)
                y64 = F.conv2d(x64, weight.double(), None, stride, padding, 1, channels)
                want = torch.autograd.grad(y64, x64, grad)[0]
                scale = max(1.0, want.abs().max().item())
                assert (dx.double() - want).abs().max().item() < 1e-5 * scale, where


@needs_compiler
def test_depthwise_conv_without_a_loop_for_the_kernel_says_so():
    x = torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last)
    assert native.depthwise_conv(x, torch.randn(4, 1, 9, 9), (1, 1), (4, 4), (9, 9)) is None
    assert native.depthwise_conv(x, torch.randn(4, 1, 3, 3), (1, 3), (1, 1), (9, 3)) is None
    conv = ops.Conv2dSame(4, 4, 9, groups=4).to(memory_format=torch.channels_last)
    y = conv(x)  # oneDNN's output and input gradient instead; the native weight gradient
    ref = F.conv2d(x, conv.weight, None, 1, 4, 1, 4)
    assert y.grad_fn.name() == "_NativeDepthwiseBackward" and torch.allclose(y, ref, atol=1e-6)


@needs_compiler
def test_depthwise_weight_grad_is_the_same_every_run(monkeypatch):
    monkeypatch.setattr(native, "PARALLEL_MIN_WORK", 0)  # two threads even on a small map
    x = torch.randn(6, 20, 15, 15).to(memory_format=torch.channels_last)
    grad = torch.randn(6, 20, 15, 15).to(memory_format=torch.channels_last)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [native.depthwise_weight_grad(grad, x, (5, 5), (1, 1), (2, 2)) for _ in range(3)]
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def assert_path_trains_alike(conv, x, path: str, function: str) -> None:
    """``conv``'s output and gradients with fast path ``path`` off and on agree, and it runs
    through ``function`` exactly when on."""
    x = x.requires_grad_(True)
    results = []
    for on in (False, True):
        ops.FAST_PATHS[path] = on
        try:
            y = conv(x)
        finally:
            ops.FAST_PATHS[path] = True
        assert (y.grad_fn.name() == f"{function}Backward") is on
        torch.manual_seed(1)
        grad = torch.randn_like(y)
        results.append((y, *torch.autograd.grad(y, (x, conv.weight), grad)))
    for got, want, what in zip(results[1], results[0], ("output", "dx", "dw"), strict=True):
        scale = max(1.0, want.abs().max().item())
        assert (got - want).abs().max().item() <= 1e-5 * scale, what


@needs_compiler
@pytest.mark.parametrize(
    "kernel, stride, size",
    [(3, 1, 16), (5, 2, 16), (7, 2, 15), (5, 1, 4), (7, 1, 2), (3, 1, 1), (5, 2, 4), (3, 2, 2)],
)
def test_depthwise_convolutions_train_through_the_native_gradient(kernel, stride, size):
    """Stride 1; stride 2 on an even map (asymmetric "SAME": a padded copy) and an odd one;
    maps smaller than the kernel, which take the dense per-channel product when switched off."""
    conv = ops.Conv2dSame(12, 12, kernel, stride=stride, groups=12)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(8, 12, size, size).to(memory_format=torch.channels_last)
    assert_path_trains_alike(conv, x, "native_depthwise", "_NativeDepthwise")


@needs_compiler
def test_the_native_gradient_only_runs_where_it_applies():
    conv = ops.Conv2dSame(12, 12, 3, groups=12).to(memory_format=torch.channels_last)
    x = torch.randn(8, 12, 16, 16).to(memory_format=torch.channels_last)
    assert conv(x).grad_fn.name() == "_NativeDepthwiseBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    assert conv(x.contiguous()).grad_fn.name() != "_NativeDepthwiseBackward"  # NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).grad_fn.name() != "_NativeDepthwiseBackward"
    conv64 = ops.Conv2dSame(12, 12, 3, groups=12).double().to(memory_format=torch.channels_last)
    assert conv64(x.double()).grad_fn.name() != "_NativeDepthwiseBackward"


@needs_compiler
def test_compiles_once_into_the_cache(fresh_native):
    assert native.library() is not None and native.unavailable_reason() is None
    built = list((fresh_native / "native").glob("kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._state.clear()  # a new process finds it there
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp
    assert [p.name for p in (fresh_native / "native").iterdir()] == [built[0].name]


def test_switched_off_by_the_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("NASNET_NATIVE", "0")
    assert native.library() is None
    assert native.unavailable_reason() == "NASNET_NATIVE=0"
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    assert native.depthwise_weight_grad(x, x, (3, 3), (1, 1), (1, 1)) is None
    conv = ops.Conv2dSame(12, 12, 5, groups=12).to(memory_format=torch.channels_last)
    y = conv(torch.randn(16, 12, 32, 32).to(memory_format=torch.channels_last))
    assert y.grad_fn.name() == "_DepthwiseColumnGradBackward"  # the PyTorch path instead


def test_no_compiler_leaves_the_pytorch_path(fresh_native, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert native.library() is None
    assert native.unavailable_reason() == "no C++ compiler (no-such-compiler-here not found)"


def test_a_failing_compiler_leaves_the_pytorch_path(fresh_native, monkeypatch):
    monkeypatch.setenv("CXX", shutil.which("false") or "/bin/false")
    assert native.library() is None
    assert native.unavailable_reason().startswith("compiling the native kernels failed: ")
    assert list((fresh_native / "native").iterdir()) == []  # no half-written library left


@needs_compiler
@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_builds_for_other_vector_widths_agree(fresh_native, monkeypatch, capability):
    """The 8-lane build (AVX2, or none: SSE / NEON registers in pairs) gives the same results
    as PyTorch; it runs here too, on wider hardware."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert native.library() is not None, native.unavailable_reason()
    torch.manual_seed(0)
    for channels, kernel, stride in [(12, 3, 1), (20, 5, 2), (36, 7, 1)]:
        x = torch.randn(4, channels, 11, 11).to(memory_format=torch.channels_last)
        weight = torch.randn(channels, 1, kernel, kernel)
        pad = (kernel // 2, kernel // 2)
        y = F.conv2d(x, weight, None, stride, pad, 1, channels)
        got = native.depthwise_conv(x, weight, (stride, stride), pad, tuple(y.shape[2:]))
        assert (got - y).abs().max().item() < 1e-5 * max(1.0, y.abs().max().item())
        grad = torch.randn_like(y)
        want = reference_weight_grad(grad, x, (kernel, kernel), (stride, stride), pad)
        dw = native.depthwise_weight_grad(grad, x, (kernel, kernel), (stride, stride), pad)
        assert (dw.double() - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max())


@needs_compiler
@pytest.mark.parametrize("channels", [1, 5, 12, 17, 24, 36, 48, 100])
def test_batch_norm_equals_pytorch(channels, monkeypatch):
    """Output, running statistics and gradients of a training step, against float64
    nn.BatchNorm2d; a mean far from zero (100) loses no precision."""
    monkeypatch.setattr(ops, "NATIVE_BATCH_NORM_MIN_ELEMENTS", 0)  # small maps too,
    monkeypatch.setattr(ops, "_float_vector_width", lambda: 64)  # and 16, 32 or 48 channels
    torch.manual_seed(channels)
    for shape, threads in itertools.product([(4, 7, 9), (8, 16, 16), (2, 1, 3)], (1, 2)):
        x = (torch.randn(shape[0], channels, *shape[1:]) * 3 + 100).to(
            memory_format=torch.channels_last
        )
        ours = ops.BatchNorm2d(channels, momentum=0.3)
        ours.weight.data.uniform_(0.5, 2.0)
        ours.bias.data.normal_()
        ref = torch.nn.BatchNorm2d(channels, momentum=0.3).double()
        ref.load_state_dict(ours.state_dict())
        grad = torch.randn_like(x)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            leaf = x.clone().requires_grad_(True)
            y = ours(leaf)
            assert y.grad_fn.name() == "_NativeBatchNormBackward"
            y.backward(grad)
        finally:
            torch.set_num_threads(previous)
        leaf64 = x.double().requires_grad_(True)
        y64 = ref(leaf64)
        y64.backward(grad.double())
        pairs = [
            (y, y64, "y"), (leaf.grad, leaf64.grad, "dx"),
            (ours.weight.grad, ref.weight.grad, "dweight"),
            (ours.bias.grad, ref.bias.grad, "dbias"),
            (ours.running_mean, ref.running_mean, "running mean"),
            (ours.running_var, ref.running_var, "running var"),
        ]  # fmt: skip
        for got, want, what in pairs:
            scale = max(1.0, want.abs().max().item())
            err = (got.double() - want).abs().max().item() / scale
            assert err < 2e-5, f"{what} {shape} threads {threads}: {err:.1e}"
        assert ours.num_batches_tracked.item() == 1


@needs_compiler
def test_batch_norm_takes_the_native_kernels_only_where_they_apply():
    bn = ops.BatchNorm2d(12)
    x = torch.randn(64, 12, 19, 19).to(memory_format=torch.channels_last)
    assert x.numel() >= ops.NATIVE_BATCH_NORM_MIN_ELEMENTS
    assert bn(x).grad_fn.name() == "_NativeBatchNormBackward"
    assert bn(x[:4]).grad_fn.name() != "_NativeBatchNormBackward"  # small: ATen's
    whole_vectors = torch.randn(64, 32, 19, 19).to(memory_format=torch.channels_last)
    assert ops.BatchNorm2d(32)(whole_vectors).grad_fn.name() != "_NativeBatchNormBackward"
    assert bn(x.contiguous()).grad_fn.name() != "_NativeBatchNormBackward"  # NCHW
    assert bn.eval()(x).grad_fn.name() != "_NativeBatchNormBackward"  # running statistics
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.train()(x[:1, :, :1, :1])  # nn.BatchNorm2d's own error


@needs_compiler
def test_an_unwritable_cache_builds_in_the_temp_folder(fresh_native, monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NASNET_CACHE_DIR", str(blocked))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    assert native.library() is not None, native.unavailable_reason()
    assert list((tmp_path / "tmp").glob("nasnet-native-*/kernels-*.so"))


@needs_compiler
@pytest.mark.parametrize("k, m", [(12, 12), (36, 12), (3, 128), (128, 7), (20, 20), (80, 80)])
def test_pointwise_equals_pytorch(k, m):
    """The output, and (weight transposed) the input gradient; pixel counts that leave a
    part-tile, on one and two threads (split between them from 2^18 multiply-adds)."""
    torch.manual_seed(k * 1000 + m)
    weight = torch.randn(m, k, 1, 1)
    sizes = [(1, 1, 1), (3, 5, 7), (5, 9, 11), (64, 8, 8)]
    for (n, h, w), threads in itertools.product(sizes, (1, 2)):
        x = torch.randn(n, k, h, w).to(memory_format=torch.channels_last)
        x64 = x.double().requires_grad_(True)
        y64 = F.conv2d(x64, weight.double())
        grad = torch.randn_like(y64)
        want = torch.autograd.grad(y64, x64, grad)[0]
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            y = native.pointwise(x, weight.view(m, k))
            g = grad.float().contiguous(memory_format=torch.channels_last)
            dx = native.pointwise(g, weight.view(m, k), transposed=True)
        finally:
            torch.set_num_threads(previous)
        where = f"{(n, h, w)} threads {threads}"
        assert y.shape == y64.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - y64).abs().max().item() < 1e-5 * max(1.0, y64.abs().max()), where
        assert (dx.double() - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max()), where
    assert native.pointwise(x, torch.randn(129, k)) is None  # more outputs than it holds


@needs_compiler
@pytest.mark.parametrize("c_in, c_out, size", [(12, 12, 32), (36, 12, 17), (80, 80, 17)])
def test_pointwise_convolutions_train_through_the_native_kernel(c_in, c_out, size):
    conv = ops.Conv2dSame(c_in, c_out, 1).to(memory_format=torch.channels_last)
    x = torch.randn(16, c_in, size, size).to(memory_format=torch.channels_last)
    assert_path_trains_alike(conv, x, "native_pointwise", "_NativePointwise")
    with torch.no_grad():
        assert conv(x).grad_fn is None  # inference: oneDNN's
    small = x[:1, :, :8, :8].contiguous(memory_format=torch.channels_last)
    assert conv(small).grad_fn.name() != "_NativePointwiseBackward"  # the matmul's


def half_step(sep, bn, x, relu: bool, fused: bool):
    """One training step of ``bn(sep(relu(x) if relu else x))``, fused or layer by layer: its
    output, gradients (input, then parameters) and BatchNorm buffers."""
    x = x.clone().requires_grad_(True)
    if fused:
        y = ops.separable_half(sep, bn, x, relu)
        assert y.grad_fn.name() == "_SeparableHalfBackward"
    else:
        y = bn(sep(F.relu(x) if relu else x))
    torch.manual_seed(1)
    params = [*sep.parameters(), *bn.parameters()]
    grads = torch.autograd.grad(y, [x, *params], torch.randn_like(y))
    return [y, *grads, *(b.clone() for b in bn.buffers())]


@needs_compiler
@pytest.mark.parametrize(
    "c_in, c_out, kernel, size",
    [(12, 12, 3, 16), (20, 40, 5, 4), (40, 40, 7, 2), (16, 32, 3, 4), (12, 12, 5, 48)],
)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_separable_halves_train_alike_fused(c_in, c_out, kernel, size, relu, momentum):
    """Output, gradients and BatchNorm buffers over two steps, fused and layer by layer: maps
    of 2-48 pixels (1x1 convolutions as products and natively; the native BatchNorm, and
    ATen's for whole vectors of channels), more outputs than inputs, a cumulative average.
    Inputs stay 0.1 away from zero, so that float rounding never flips the ReLU."""
    torch.manual_seed(0)
    sep = ops.SeparableConv2d(c_in, c_out, kernel, 1).to(memory_format=torch.channels_last)
    bn = ops.BNConfig().make(c_out)
    bn.momentum = momentum
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.1, 0.1), bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(8, c_in, size, size)
    x = (x + 0.1 * x.sign()).to(memory_format=torch.channels_last)
    results = []
    for fused in (False, True):
        layers = copy.deepcopy(sep), copy.deepcopy(bn)
        results.append([half_step(*layers, x * scale, relu, fused) for scale in (1.0, 2.0)])
    for fused_step, plain_step in zip(results[1], results[0], strict=True):
        for got, want in zip(fused_step, plain_step, strict=True):
            if want.dtype == torch.int64:  # num_batches_tracked
                assert torch.equal(got, want)
            else:
                scale = max(1.0, want.abs().max().item())
                assert (got - want).abs().max().item() <= 1e-5 * scale


@needs_compiler
def test_separable_ops_run_as_fused_halves():
    """Both halves of a stride-1 op; only the second of a stride-2 one (the first runs layer
    by layer)."""
    x = torch.randn(8, 12, 8, 8).to(memory_format=torch.channels_last)
    for stride, fused_halves in ((1, 2), (2, 1)):
        op = ops.SepConvTwice(12, 12, 3, stride, ops.BNConfig())
        op = op.to(memory_format=torch.channels_last)
        y = op(x)
        names, node = [], y.grad_fn
        while node is not None:
            names.append(node.name())
            node = node.next_functions[0][0] if node.next_functions else None
        assert names.count("_SeparableHalfBackward") == fused_halves
        assert [b.item() for b in (op[2].num_batches_tracked, op[5].num_batches_tracked)] == [1, 1]


@needs_compiler
def test_the_fused_half_only_runs_where_it_applies():
    op = ops.SepConvTwice(12, 12, 3, 1, ops.BNConfig()).to(memory_format=torch.channels_last)
    x = torch.randn(8, 12, 8, 8).to(memory_format=torch.channels_last)
    fused = "_SeparableHalfBackward"
    assert op(x).grad_fn.name() == fused
    nchw = copy.deepcopy(op).to(memory_format=torch.contiguous_format)
    assert nchw(x.contiguous()).grad_fn.name() != fused
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert op(x).grad_fn.name() != fused
    assert copy.deepcopy(op).double()(x.double()).grad_fn.name() != fused
    with torch.no_grad():
        assert op(x).grad_fn is None
    assert op.eval()(x).grad_fn.name() != fused  # the running statistics normalise
    op.train()
    op[5].weight.requires_grad_(False)  # a frozen BatchNorm
    assert op(x).grad_fn.name() != fused
