"""The exact fast paths of ``nasnet.ops.FAST_PATHS`` give the same outputs and gradients as
the plain formulation (padded copies, per-op ReLUs, oneDNN depthwise on tiny maps)."""

import copy
import itertools
import random
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import nasnet
from nasnet import ops
from nasnet.genotypes import NASNET_A
from nasnet.space import SearchSpace

TOL = 1e-5  # float32; float64 runs must agree to 1e-10 (the same function, exactly)


@contextmanager
def fast_paths(on: bool, only: str | None = None):
    saved = dict(ops.FAST_PATHS)
    for name in ops.FAST_PATHS:
        ops.FAST_PATHS[name] = on if only is None or name == only else not on
    try:
        yield
    finally:
        ops.FAST_PATHS.update(saved)


@pytest.fixture(autouse=True)
def every_size_takes_the_fast_paths(monkeypatch):
    """Small test maps take the paths that are gated to large maps (and to channel counts that
    are not whole vectors) for speed, so that each test compares two different computations."""
    monkeypatch.setattr(ops, "FEW_CHANNEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(ops, "_float_vector_width", lambda: 64)


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    tol = TOL if b.dtype == torch.float32 else 1e-10
    assert diff <= tol * scale, f"{what}: max |difference| {diff:.2e} (scale {scale:.1f})"


def run(model, x, train: bool, seed: int = 0):
    """Logits (and aux logits), input gradient and parameter gradients of one step."""
    model = copy.deepcopy(model).train(train)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same drop-path draws on both sides
    logits, aux = model.forward_with_aux(x)
    loss = F.cross_entropy(logits, torch.arange(len(x)) % logits.shape[1])
    if aux is not None:
        loss = loss + 0.4 * F.cross_entropy(aux, torch.arange(len(x)) % aux.shape[1])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), aux, x.grad, grads


def assert_equivalent(model, x, only: str | None = None) -> None:
    for train in (True, False):
        with fast_paths(False):
            ref = run(model, x, train)
        with fast_paths(True, only):
            got = run(model, x, train)
        mode = "train" if train else "eval"
        assert_close(got[0], ref[0], f"{mode} logits")
        if ref[1] is not None:
            assert_close(got[1].detach(), ref[1].detach(), f"{mode} aux logits")
        assert_close(got[2], ref[2], f"{mode} input gradient")
        assert got[3].keys() == ref[3].keys()
        for name, grad in ref[3].items():
            assert_close(got[3][name], grad, f"{mode} gradient of {name}")


def randomized(model):
    """Random BN affine parameters so that every path matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("pool_padding", ["timm", "tf"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_imagenet_stem_fast_paths_are_exact(pool_padding, channels_last):
    # 64 -> 31 -> 16 -> 8 -> 4 -> 2: odd and even sizes, 4x4 and 2x2 maps (dense depthwise)
    torch.manual_seed(0)
    model = nasnet.create_model(
        "nasnet_a_large", num_classes=10, cells=1, filters=16, image_size=64,
        pool_padding=pool_padding, auxiliary=True, drop_path_keep_prob=0.7,
    )  # fmt: skip
    model = randomized(model)
    model.set_drop_path_progress(0.5)
    x = torch.randn(4, 3, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    assert_equivalent(model, x)


@pytest.mark.parametrize("only", sorted(ops.FAST_PATHS))
def test_each_fast_path_alone_is_exact(only):
    torch.manual_seed(0)
    model = nasnet.build_network(
        NASNET_A, stem="cifar", cells=1, filters=8, num_classes=10, image_size=8,
        auxiliary=True, drop_path_keep_prob=0.6,
    )  # fmt: skip
    model = randomized(model).to(memory_format=torch.channels_last)
    model.set_drop_path_progress(0.8)
    x = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)
    assert_equivalent(model, x, only=only)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [3, 7])
def test_searched_cells_fast_paths_are_exact(seed, dtype):
    genotype = SearchSpace().sample(random.Random(seed))  # every op kind over a few seeds
    torch.manual_seed(seed)
    model = nasnet.build_network(
        genotype, stem="cifar", cells=1, filters=8, num_classes=10, image_size=10,
        drop_path_keep_prob=0.7, auxiliary=True,
    )  # fmt: skip
    model = randomized(model).to(dtype=dtype, memory_format=torch.channels_last)
    model.set_drop_path_progress(1.0)
    x = torch.randn(8, 3, 10, 10, dtype=dtype).to(memory_format=torch.channels_last)
    assert_equivalent(model, x)


REPEATED_POOLS = nasnet.space.Genotype(
    normal=nasnet.space.Cell(
        blocks=(
            nasnet.space.Block(1, 1, "avg_pool_3x3", "avg_pool_3x3"),  # projected (c_in != F)
            nasnet.space.Block(0, 0, "max_pool_3x3", "sep_conv_3x3"),
            nasnet.space.Block(0, 2, "max_pool_3x3", "avg_pool_3x3"),
            nasnet.space.Block(3, 1, "max_pool_5x5", "avg_pool_3x3"),
            nasnet.space.Block(4, 4, "max_pool_5x5", "max_pool_5x5"),
        )
    ),
    reduction=NASNET_A.reduction,  # max-pools h_i twice
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repeated_pools_are_computed_once_and_exact(dtype):
    torch.manual_seed(0)
    model = nasnet.build_network(
        REPEATED_POOLS, stem="cifar", cells=1, filters=8, num_classes=10, image_size=8,
        drop_path_keep_prob=0.6,
    )  # fmt: skip
    model = randomized(model).to(dtype=dtype, memory_format=torch.channels_last)
    model.set_drop_path_progress(0.8)
    x = torch.randn(4, 3, 8, 8, dtype=dtype).to(memory_format=torch.channels_last)
    assert_equivalent(model, x, only="shared_pools")
    calls = {True: 0, False: 0}
    on = [True]

    def count(module, inputs, output):
        calls[on[0]] += 1

    for module in model.modules():
        if isinstance(module, (ops.MaxPool2dSame, ops.AvgPool2dSame)):
            module.register_forward_hook(count)
    for on[0] in (True, False):
        with fast_paths(on[0]):
            model.train()(x)
    # 3 normal cells: 9 pool uses of 5 distinct (pool, state) pairs; 2 reduction cells: 4 of 3
    assert calls == {True: 3 * 5 + 2 * 3, False: 3 * 9 + 2 * 4}


def test_ceil_mode_pools_equal_padded_pools():
    for size, k, s in itertools.product(range(1, 14), (3, 5, 7), (1, 2)):
        x = torch.randn(2, 3, size, size + 1).to(memory_format=torch.channels_last)
        for layer in (
            ops.MaxPool2dSame(k, s),
            ops.AvgPool2dSame(k, s),
            ops.AvgPool2dSame(k, s, count_pad_strided=True),
        ):
            with fast_paths(False):
                ref = layer(x)
            with fast_paths(True):
                got = layer(x)
            assert got.shape == ref.shape, (size, k, s, layer)
            assert_close(got, ref, f"{type(layer).__name__} {size} k{k} s{s}")


@pytest.mark.parametrize("channels_last", [True, False])
def test_dense_depthwise_equals_padded_convolution(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for size, k, s, d in itertools.product(range(1, 6), (3, 5, 7), (1, 2), (1, 2)):
        conv = ops.Conv2dSame(6, 6, k, s, dilation=d, groups=6).to(memory_format=fmt)
        x = torch.randn(2, 6, size, size).to(memory_format=fmt).requires_grad_(True)
        results = []
        for on in (False, True):
            with fast_paths(on):
                y = conv(x)
            grad = torch.ones_like(y) + torch.arange(y.numel()).view_as(y) % 3
            results.append((y, *torch.autograd.grad(y, (x, conv.weight), grad)))
            assert y.is_contiguous(memory_format=fmt)
            if channels_last:  # the default layout: dx stays in it (no conversion downstream)
                assert results[-1][1].is_contiguous(memory_format=fmt)
        for got, ref, what in zip(results[1], results[0], ("output", "dx", "dw"), strict=True):
            assert_close(got, ref, f"depthwise {what} {size} k{k} s{s} d{d}")


@pytest.mark.parametrize("size", [2, 5, 8, 40])
@pytest.mark.parametrize("c_in, c_out", [(24, 16), (36, 12), (96, 5)])
def test_pointwise_matmul_equals_convolution(size, c_in, c_out):
    layer = ops.Pointwise(c_in, c_out).to(memory_format=torch.channels_last)
    x = torch.randn(3, c_in, size, size).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    results = []
    for on in (False, True):
        with fast_paths(on):
            y = layer(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        grads = torch.autograd.grad(y.square().sum(), (x, layer.weight))
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
        results.append((y, *grads))
    for got, ref, what in zip(results[1], results[0], ("output", "dx", "dw"), strict=True):
        assert_close(got, ref, f"pointwise {c_in}->{c_out} {what} at {size}x{size}")


def test_pointwise_matmul_grad_runs_for_few_output_channels_of_larger_maps(monkeypatch):
    """oneDNN's forward and matrix-product gradients for 1x1 convolutions to few output
    channels from at least twice as many inputs; other 1x1 convolutions keep their path.
    (Where the native kernels compiled, ``native_pointwise`` runs ahead of it.)"""
    monkeypatch.setitem(ops.FAST_PATHS, "native_pointwise", False)
    taken = []
    monkeypatch.setattr(
        ops._PointwiseMatmulGrad, "apply", lambda *a: taken.append(a) or F.conv2d(*a)
    )

    def maps(c_in):
        return torch.randn(2, c_in, 48, 48).to(memory_format=torch.channels_last)

    for c_in, c_out, expected in [(36, 12, 1), (36, 13, 0), (24, 12, 1), (23, 12, 0)]:
        taken.clear()
        ops.Pointwise(c_in, c_out)(maps(c_in).requires_grad_(True))
        assert len(taken) == expected, (c_in, c_out)
    x = maps(36)
    taken.clear()
    with torch.no_grad():  # nothing to differentiate: oneDNN's forward alone
        ops.Pointwise(36, 12)(x)
    ops.Pointwise(36, 12)(x.contiguous())  # NCHW
    assert not taken


def test_exports_trace_the_plain_path():
    assert ops.fast("shared_relu")
    traced = []

    def probe(module, inputs, output):
        traced.append(ops.fast("small_depthwise"))

    model = nasnet.build_network(NASNET_A, cells=1, filters=8, num_classes=10).eval()
    model.classifier.register_forward_hook(probe)
    with torch.no_grad():
        torch.jit.trace(model, torch.randn(1, 3, 8, 8), check_trace=False)
    assert traced == [False]


@pytest.mark.skipif(
    not hasattr(torch.compiler, "is_exporting"), reason="torch < 2.6 cannot tell it exports"
)
def test_torch_export_takes_any_batch_size():
    """The fast paths branch on the batch's pixel count; torch.export traces the plain path,
    so an export with a dynamic batch is not limited to the batch sizes of one branch."""
    torch.manual_seed(0)
    model = nasnet.build_network(NASNET_A, cells=1, filters=8, num_classes=10).eval()
    model = model.to(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=1024)
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
    for n in (1, 5, 40):  # 32x32 maps take the 1x1-as-matmul path up to a batch of 4
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            assert_close(exported(x), model(x), f"exported logits at batch {n}")


@pytest.mark.parametrize("offset", [0, 1])
def test_strided_view_gradients_keep_channels_last(offset):
    # A mixed-layout gradient sends the ReLU and 1x1 weight gradients of every tensor read by
    # a factorized reduction down a slow path; autograd's own slice backward is NCHW.
    def gradient_layout(on: bool) -> bool:
        leaf = torch.randn(2, 5, 7, 7).to(memory_format=torch.channels_last).requires_grad_()
        x = leaf * 2.0
        seen = []
        x.register_hook(lambda g: seen.append(g))
        with fast_paths(on, "layout_preserving_subsample"):
            y = ops.subsample(x, (2, 2), offset=offset)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        expected = torch.zeros(2, 5, 7, 7)
        expected[:, :, offset::2, offset::2] = torch.arange(y.numel()).reshape(y.shape).float()
        assert torch.equal(seen[0], expected)
        return seen[0].is_contiguous(memory_format=torch.channels_last)

    assert gradient_layout(True)
    assert not gradient_layout(False)  # what the fast path exists to avoid


@pytest.mark.parametrize("shape", [(3, 10, 4, 5), (2, 7, 1, 1)])
def test_spatial_mean_of_channels_last_maps_returns_a_channels_last_gradient(shape):
    # The global pool's NCHW gradient met the final ReLU in a mixed-layout backward (5x slower).
    def mean_and_gradient(on: bool, layout) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        leaf = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        x = (leaf * 2.0).contiguous(memory_format=layout)
        reaching = []  # the gradient the op before the pool receives, as it arrives
        x.register_hook(reaching.append)
        with fast_paths(on, "channels_last_mean"):
            y = ops.spatial_mean(x)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        return y, reaching[0]

    y, grad = mean_and_gradient(True, torch.channels_last)
    plain_y, plain_grad = mean_and_gradient(False, torch.channels_last)
    assert y.shape == plain_y.shape == shape[:2]
    assert_close(y, plain_y, "mean")
    assert_close(grad, plain_grad, "gradient")
    assert grad.is_contiguous(memory_format=torch.channels_last)
    if shape[2] * shape[3] > 1:
        assert not plain_grad.is_contiguous(memory_format=torch.channels_last)
    nchw_y, nchw_grad = mean_and_gradient(True, torch.contiguous_format)  # NCHW: plain mean
    assert_close(nchw_y, plain_y, "NCHW mean")
    assert_close(nchw_grad, plain_grad, "NCHW gradient")


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(4, 12, 6, 6), (3, 7, 5, 7), (2, 3, 1, 2), (5, 15, 3, 3)])
def test_few_channel_batch_norm_equals_batch_norm(shape, momentum):
    # outputs, every gradient and the running statistics eval mode will use, over two steps
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        layer = ops.BatchNorm2d(shape[1], momentum=momentum)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-1.0, 1.0)
        steps = []
        for step in range(2):
            x = (torch.randn(shape, dtype=torch.float64) * 3 + step).to(
                memory_format=torch.channels_last).requires_grad_(True)  # fmt: skip
            layer = layer.double()
            with fast_paths(on, "few_channel_batch_norm"):
                assert (layer._wide_rows(x) is not None) == on
                y = layer(x)
            assert y.is_contiguous(memory_format=torch.channels_last)
            grad = torch.randn(shape, dtype=torch.float64)
            steps.append((y, *torch.autograd.grad(y, (x, layer.weight, layer.bias), grad)))
        state = [layer.running_mean, layer.running_var, layer.num_batches_tracked]
        results.append((steps, state))
    (ref_steps, ref_state), (got_steps, got_state) = results
    for ref, got in zip(ref_steps, got_steps, strict=True):
        for a, b, what in zip(got, ref, ("output", "dx", "dweight", "dbias"), strict=True):
            assert_close(a, b, f"batch norm {what} {shape}")
    for a, b in zip(got_state, ref_state, strict=True):
        assert_close(a.double(), b.double(), f"running statistics {shape}")


def test_few_channel_batch_norm_keeps_aten_for_what_it_does_not_cover(monkeypatch):
    def rows(channels, shape, channels_last=True, train=True):
        x = torch.randn(shape[0], channels, *shape[1:])
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        return ops.BatchNorm2d(channels).train(train)._wide_rows(x)

    assert rows(16, (2, 4, 4)) is None  # ATen's kernel is the faster one from 16 channels
    assert rows(6, (2, 4, 4), channels_last=False) is None
    assert rows(6, (2, 4, 4), train=False) is None
    assert rows(6, (1, 1, 1)) is None  # ATen raises its own error for one value per channel
    assert rows(6, (2, 4, 4)) == 8
    assert rows(6, (1, 3, 3)) == 1
    monkeypatch.setattr(ops, "_float_vector_width", lambda: 8)  # AVX2
    assert rows(8, (2, 4, 4)) is None  # whole vectors: ATen is as fast
    assert rows(12, (2, 4, 4)) == 8
    monkeypatch.setattr(ops, "FEW_CHANNEL_MIN_ELEMENTS", 1 << 16)
    assert rows(12, (8, 16, 16)) is None  # 24,576 elements: the extra calls cost more
    assert rows(12, (64, 16, 16)) == 8


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [1, 3])
def test_whole_map_convolution_equals_convolution(size, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer = ops.WholeMapConv(6, 10, size).double().to(memory_format=fmt)
    x = torch.randn(4, 6, size, size, dtype=torch.float64).to(memory_format=fmt)
    x.requires_grad_(True)
    grad, results = torch.randn(4, 10, 1, 1, dtype=torch.float64), []
    for on in (False, True):
        with fast_paths(on, "whole_map_linear"):
            y = layer(x)
        assert y.shape == (4, 10, 1, 1)
        results.append((y, *torch.autograd.grad(y, (x, layer.weight), grad)))
        assert results[-1][2].is_contiguous(memory_format=fmt)  # the weight keeps its layout
    for got, ref, what in zip(results[1], results[0], ("output", "dx", "dw"), strict=True):
        assert_close(got, ref, f"whole-map convolution {what} at {size}x{size}")


def test_whole_map_convolution_runs_as_linear_only_on_maps_of_its_size(monkeypatch):
    calls = []

    def recorded(x, weight):
        calls.append(tuple(x.shape))
        return linear(x, weight)

    linear = ops.whole_map_linear
    monkeypatch.setattr(ops, "whole_map_linear", recorded)
    layer = ops.WholeMapConv(6, 10, 2)
    with torch.no_grad(), fast_paths(True):
        assert layer(torch.randn(2, 6, 2, 2)).shape == (2, 10, 1, 1)
        assert layer(torch.randn(2, 6, 3, 3)).shape == (2, 10, 2, 2)  # a real convolution
    with torch.no_grad(), fast_paths(False):
        layer(torch.randn(2, 6, 2, 2))
    assert calls == [(2, 6, 2, 2)]


@pytest.mark.parametrize("kernel", [5, 7, 9])
def test_depthwise_column_grad_equals_convolution_gradient(kernel):
    pad = kernel // 2
    for height, width in [(1, 2), (3, 3), (4, 7), (9, 10)]:  # windows shifted past the edge too
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last).requires_grad_(True)
        weight = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
        grad = torch.randn(2, 3, height, width, dtype=torch.float64)
        ref = torch.autograd.grad(F.conv2d(x, weight, None, 1, pad, 1, 3), (x, weight), grad)
        y = ops._DepthwiseColumnGrad.apply(x, weight, (1, 1), (pad, pad))
        got = torch.autograd.grad(y, (x, weight), grad)
        for a, b, what in zip(got, ref, ("dx", "dw"), strict=True):
            assert_close(a, b, f"depthwise {kernel}x{kernel} {what} at {height}x{width}")


@pytest.mark.parametrize("kernel, stride, size", [(5, 1, 32), (7, 2, 32), (7, 2, 31), (5, 2, 33)])
def test_depthwise_column_grad_runs_where_it_pays(kernel, stride, size):
    """Stride 1; stride 2 on an even map (a padded copy, asymmetric "SAME") and on odd ones
    (symmetric: the convolution pads itself, the weight gradient reads a padded copy)."""
    conv = ops.Conv2dSame(8, 8, kernel, stride=stride, groups=8)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(32, 8, size, size).to(memory_format=torch.channels_last).requires_grad_(True)
    assert ops._column_grad_pays(x) and not ops._column_grad_pays(x[:, :, :8, :4])
    results = []
    for on in (False, True):
        with fast_paths(on, "depthwise_column_grad"):
            y = conv(x)
        assert (y.grad_fn.name() == "_DepthwiseColumnGradBackward") is on
        results.append((y, *torch.autograd.grad(y, (x, conv.weight), torch.ones_like(y))))
    for got, ref, what in zip(results[1], results[0], ("output", "dx", "dw"), strict=True):
        assert_close(got, ref, f"depthwise {kernel}x{kernel} s{stride} {what} at {size}x{size}")


@pytest.mark.parametrize("kernel", [3, 5])
def test_window_mean_equals_average_pool(kernel):
    for height, width in [(1, 1), (2, 5), (7, 4), (16, 17)]:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last).requires_grad_(True)
        grad = torch.randn(2, 3, height, width, dtype=torch.float64)
        ref_y = F.avg_pool2d(x, kernel, 1, kernel // 2, count_include_pad=False)
        got_y = ops.window_mean(x, kernel)
        assert got_y.is_contiguous(memory_format=torch.channels_last)
        ref = torch.autograd.grad(ref_y, x, grad)[0]
        got = torch.autograd.grad(got_y, x, grad)[0]
        assert_close(got_y, ref_y, f"{kernel}x{kernel} mean at {height}x{width}")
        assert_close(got, ref, f"{kernel}x{kernel} mean gradient at {height}x{width}")


def test_average_pool_runs_as_convolution_where_it_pays():
    pool = ops.AvgPool2dSame(3, 1)
    x = torch.randn(4, 12, 16, 16).to(memory_format=torch.channels_last).requires_grad_(True)
    assert ops._window_sum_pays(x)
    assert not ops._window_sum_pays(x[:, :, :, :8].contiguous(memory_format=torch.channels_last))
    wide = torch.randn(4, 64, 16, 16).to(memory_format=torch.channels_last)
    assert not ops._window_sum_pays(wide)
    assert not ops._window_sum_pays(x.contiguous())  # NCHW: ATen's pool is fine there
    results = []
    for on in (False, True):
        with fast_paths(on, "avg_pool_as_conv"):
            y = pool(x)
        assert ("Mul" in y.grad_fn.name()) is on
        torch.manual_seed(1)
        results.append((y, torch.autograd.grad(y, x, torch.randn_like(y))[0]))
    assert_close(results[1][0], results[0][0], "pool output")
    assert_close(results[1][1], results[0][1], "pool gradient")


@pytest.mark.parametrize("size", [(2, 2), (4, 4), (5, 6), (7, 7)])
def test_even_and_odd_pixels_share_one_gradient(size):
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size, dtype=torch.float64).to(memory_format=torch.channels_last)
    w1 = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    w2 = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    results = []
    for on in (False, True):
        leaf = x.clone().requires_grad_(True)
        with fast_paths(on, "paired_subsample"):
            ops.FAST_PATHS["layout_preserving_subsample"] = True
            y = ops.factorized_1x1(leaf, lambda p: F.conv2d(p, w1), lambda p: F.conv2d(p, w2))
        torch.manual_seed(1)
        (y * torch.randn_like(y)).sum().backward()
        assert leaf.grad.is_contiguous(memory_format=torch.channels_last)
        results.append((y, leaf.grad))
    assert torch.equal(results[1][0], results[0][0])
    assert torch.equal(results[1][1], results[0][1])


@pytest.mark.parametrize("kernel", [5, 7, 9])
def test_strided_depthwise_column_grad_equals_convolution_gradient(kernel):
    for height, width in [(kernel, kernel), (kernel, kernel + 3), (12, 10), (17, 16)]:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last).requires_grad_(True)
        weight = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
        for stride, padding in itertools.product(((2, 2), (1, 2)), ((0, 0), (kernel // 2, 1))):
            y = F.conv2d(x, weight, None, stride, padding, 1, 3)
            grad = torch.randn_like(y)
            ref = torch.autograd.grad(y, (x, weight), grad)
            y = ops._DepthwiseColumnGrad.apply(x, weight, stride, padding)
            got = torch.autograd.grad(y, (x, weight), grad)
            for a, b, what in zip(got, ref, ("dx", "dw"), strict=True):
                where = f"stride {stride} padding {padding} {what} at {height}x{width}"
                assert_close(a, b, f"{kernel}x{kernel} {where}")


def test_concat_of_sums_equals_concatenated_sums():
    torch.manual_seed(0)
    shapes = [(2, 3, 4, 5), (2, 2, 4, 5), (2, 4, 4, 5)]
    leaves = [torch.randn(s, dtype=torch.float64).to(memory_format=torch.channels_last)
              for s in (shapes[0], shapes[0], shapes[1], shapes[2], shapes[2])]  # fmt: skip
    leaves = [t.requires_grad_(True) for t in leaves]
    a, b, c, d, e = leaves
    ref = torch.cat([a + b, c, d + e], dim=1)
    got = ops.concat_of_sums([(a, b), (c,), (d, e)])
    assert torch.equal(got, ref) and got.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(ref, leaves, grad),
                    strict=True):  # fmt: skip
        assert torch.equal(x, y)


def test_concat_of_sums_promotes_mixed_dtypes_as_cat_does():
    low = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    full = torch.randn(2, 3, 4, 4, requires_grad=True)
    got = ops.concat_of_sums([(low, full), (low,)])
    ref = torch.cat([low + full, low], dim=1)
    assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref)
    grads = torch.autograd.grad(got.sum(), (low, full))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32]


def test_autocast_operands_cast_what_autocast_casts():
    full, double = torch.ones(2), torch.ones(2, dtype=torch.float64)
    same, kept = ops.autocast_operands(full, double)  # autocast off: the tensors themselves
    assert same is full and kept is double
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, kept = ops.autocast_operands(full, double)
    assert (low.dtype, kept.dtype) == (torch.bfloat16, torch.float64)


def autocast_step(model, x, dtype):
    """Logits dtype and flat parameter gradient of one training step (autocast to ``dtype``,
    or float32 throughout for ``None``)."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, aux = model.forward_with_aux(x)
        target = torch.arange(len(x)) % logits.shape[1]
        loss = F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)
    loss.backward()
    params = list(model.parameters())
    assert all(p.grad is None or p.grad.dtype == p.dtype for p in params)
    flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).double()
    return logits.dtype, flat


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_paths_train_under_autocast(monkeypatch, dtype):
    """Custom autograd Functions see operands of one dtype under autocast, and the fast paths'
    low-precision gradient is as close to the float32 one as the plain ops' is (bfloat16
    alone moves this deep a gradient to a cosine of about 0.93)."""
    # 64 -> 31 -> 16 -> 8 -> 4 -> 2: both dense depthwise forms; wide maps: column gradients
    monkeypatch.setattr(ops, "COLUMN_GRAD_MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    model = nasnet.create_model(
        "nasnet_a_large", num_classes=10, cells=1, filters=16, image_size=64, auxiliary=True,
    )  # fmt: skip
    model = randomized(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64).to(memory_format=torch.channels_last)
    with fast_paths(False):
        _, truth = autocast_step(model, x, None)
        plain_dtype, plain = autocast_step(model, x, dtype)
    with fast_paths(True):
        fast_dtype, fast = autocast_step(model, x, dtype)
    assert fast_dtype == plain_dtype == dtype
    assert torch.isfinite(fast).all()
    fast_cosine, plain_cosine = (F.cosine_similarity(g, truth, dim=0).item() for g in (fast, plain))
    assert fast_cosine >= plain_cosine - 0.02, f"{fast_cosine:.4f} against {plain_cosine:.4f}"


@pytest.mark.parametrize("size", [2, 4])
def test_cpu_fast_paths_leave_other_devices_to_the_plain_op(monkeypatch, size):
    """Dense depthwise products and 1x1 convolutions as matmuls replace one cuDNN call by
    several kernels on a GPU; off the CPU (here the meta device) the plain op runs."""
    monkeypatch.setattr(ops, "_dense_depthwise", lambda *a: pytest.fail("dense depthwise"))
    monkeypatch.setattr(F, "linear", lambda *a: pytest.fail("1x1 convolution as a matmul"))
    with torch.device("meta"):
        depthwise = ops.Conv2dSame(8, 8, 5, groups=8).to(memory_format=torch.channels_last)
        pointwise = ops.Pointwise(8, 16).to(memory_format=torch.channels_last)
        x = torch.empty(2, 8, size, size).to(memory_format=torch.channels_last)
        with fast_paths(True):
            assert depthwise(x).shape == (2, 8, size, size)
            assert pointwise(x).shape == (2, 16, size, size)
            assert not any(ops.fast(name, x) for name in ops.CPU_FAST_PATHS)
    with fast_paths(True):
        assert all(ops.fast(name, torch.empty(1)) for name in ops.CPU_FAST_PATHS)


def test_torch_compile_traces_one_graph_of_the_plain_path():
    # Fast paths break dynamo's graph (custom Functions, ``out=`` views, CPU-capability
    # strings) and made inductor fail on the resulting fragments; compiled code takes the plain
    # path, which the compiler fuses itself.
    torch.manual_seed(0)
    model = nasnet.build_network(
        NASNET_A, cells=1, filters=8, num_classes=10, image_size=16, drop_path_keep_prob=0.6
    ).to(memory_format=torch.channels_last)
    model.set_drop_path_progress(0.5)  # keep probability below 1: DropPath runs
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    for train in (True, False):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.train(train))(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
    compiled = torch.compile(model.eval(), backend="aot_eager")
    with torch.no_grad():
        assert_close(compiled(x), model(x), "compiled eval logits")
