"""The weight-sharing supernet: any genotype of a space is a sub-network, and the sub-network
computes what the standalone ``build_network`` model computes with the same weights."""

from __future__ import annotations

import random

import pytest
import torch

from nasnet.space import Block, Cell, Genotype, GenotypeError, SearchSpace
from nasnet.supernet import SuperNet, plan_cells

SPACE = SearchSpace(num_blocks=2)


@pytest.fixture(scope="module")
def supernet() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(SPACE, cells=1, filters=4, num_classes=4, in_chans=3)


def _compare(net: SuperNet, genotype: Genotype, x: torch.Tensor) -> None:
    """Outputs and input gradients of the sub-network equal the standalone model's."""
    x1 = x.clone().requires_grad_()
    y1 = net(x1, genotype)
    model = net.to_standalone(genotype)
    model.train()  # batch statistics, as the supernet always uses
    x2 = x.clone().requires_grad_()
    y2 = model(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(y1)
    (y1 * weights).sum().backward()
    (y2 * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-3, atol=1e-4)  # float rounding


def test_sampled_subnetworks_equal_standalone_networks(supernet) -> None:
    rng = random.Random(3)
    x = torch.randn(5, 3, 8, 8)
    for _ in range(6):
        _compare(supernet, SPACE.sample(rng), x)


def test_concat_combines_and_the_unused_state_rule(supernet) -> None:
    # every block concatenates (2C-wide states read by ops and by the next cells), and the
    # cell inputs are unused so they are concatenated into the output (with projections)
    concat = Cell((Block(0, 1, "identity", "max_pool_3x3", "concat"),
                   Block(2, 2, "identity", "avg_pool_3x3", "concat")))  # fmt: skip
    only_block = Cell((Block(1, 0, "sep_conv_3x3", "conv_1x1", "add"),
                       Block(2, 2, "conv_3x3", "dil_conv_3x3", "add")))  # fmt: skip
    x = torch.randn(4, 3, 8, 8)
    for genotype in (Genotype(concat, concat), Genotype(concat, only_block),
                     Genotype(only_block, concat)):  # fmt: skip
        _compare(supernet, genotype, x)
    # explicit concat lists are sub-networks too
    explicit = Cell(concat.blocks, concat=(3, 0))
    _compare(supernet, Genotype(explicit, concat), x)


def test_every_genotype_of_a_small_space_runs() -> None:
    space = SearchSpace(num_blocks=1, ops=("identity", "max_pool_3x3", "sep_conv_3x3"))
    net = SuperNet(space, cells=1, filters=4, num_classes=3, in_chans=1)
    x = torch.randn(2, 1, 8, 8)
    sizes = space.action_sizes()
    seen = 0
    for index in range(_product(sizes[:5])):
        actions = _digits(index, sizes[:5])
        genotype = space.decode(actions + actions)
        assert net(x, genotype).shape == (2, 3)
        seen += 1
    assert seen == 2 * 2 * 3 * 3 * 2


def test_imagenet_stem_and_larger_n_match(supernet) -> None:
    torch.manual_seed(1)
    rng = random.Random(5)
    net = SuperNet(SPACE, stem="imagenet", cells=2, filters=8, num_classes=3, in_chans=3)
    assert len(net.cells) == len(plan_cells("imagenet", 2, 8)[1]) == 2 + 6 + 2
    _compare(net, SPACE.sample(rng), torch.randn(3, 3, 24, 24))


def test_genotypes_outside_the_space_are_refused(supernet) -> None:
    big = SearchSpace(num_blocks=3).sample(random.Random(0))
    with pytest.raises(GenotypeError):
        supernet.check(big)
    narrow = SuperNet(SearchSpace(num_blocks=1, ops=("identity",)), cells=1, filters=4)
    with pytest.raises(GenotypeError):
        narrow.check(SearchSpace(num_blocks=1).decode([0, 0, 5, 5, 0] * 2))


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _digits(index: int, sizes) -> list[int]:
    out = []
    for size in sizes:
        out.append(index % size)
        index //= size
    return out


class _BatchNormalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.batch_norm(x, None, None, training=True)


def test_normalize_free_ops_normalizes_exactly_the_weightless_ops(supernet) -> None:
    torch.manual_seed(0)  # the same weights as the fixture: the option adds none
    net = SuperNet(SPACE, cells=1, filters=4, num_classes=4, in_chans=3, normalize_free_ops=True)
    free = Cell((Block(0, 1, "identity", "max_pool_3x3", "add"),
                 Block(2, 0, "avg_pool_3x3", "sep_conv_3x3", "concat")))  # fmt: skip
    weighted = Cell((Block(1, 0, "sep_conv_3x3", "conv_1x1", "add"),
                     Block(2, 2, "conv_3x3", "dil_conv_3x3", "add")))  # fmt: skip
    x = torch.randn(4, 3, 8, 8)
    _compare(net, Genotype(weighted, weighted), x)  # no weightless op: the standalone function
    genotype = Genotype(free, free)
    model = net.to_standalone(genotype).train()
    changed = 0
    for cell in model.cells:
        for i, op in enumerate(cell.ops):
            if next(op.parameters(), None) is None:
                cell.ops[i] = torch.nn.Sequential(op, _BatchNormalize())
                changed += 1
    assert changed > 0
    torch.testing.assert_close(net(x, genotype), model(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(supernet(x, genotype), model(x), atol=1e-3)
