"""The LSTM controller: shape, initialisation, sampling and scoring agree."""

from __future__ import annotations

import math
import random

import pytest
import torch

from nasnet.controller import INIT_RANGE, Controller
from nasnet.space import OPS, SearchSpace


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def test_architecture_follows_the_paper(space: SearchSpace) -> None:
    c = Controller(space)
    assert isinstance(c.lstm, torch.nn.LSTMCell)
    assert c.lstm.hidden_size == 100
    sizes = list(space.action_sizes())
    assert len(sizes) == 2 * 5 * space.num_blocks
    # one softmax head (rows of the packed layer) per position, over its legal choices
    assert c.head.out_features == sum(sizes)
    assert [c.offsets[t + 1] - c.offsets[t] for t in range(len(sizes))] == sizes
    # input heads grow with the block index: block k chooses among 2 + k states
    assert [sizes[5 * k] for k in range(5)] == [2, 3, 4, 5, 6]
    assert sizes[2] == sizes[3] == len(OPS) and sizes[4] == 2
    assert c.embedding.num_embeddings == sum(sizes[:-1])
    weights = torch.cat([p.detach().flatten() for p in c.parameters()])
    # U(-0.1, 0.1) drawn in float32 may land on float32(0.1), a hair above the float 0.1
    assert bool(weights.abs().max() <= torch.tensor(INIT_RANGE, dtype=weights.dtype))
    assert float(weights.std()) > 0.04  # spread over the range, not all zero


def test_sampled_log_prob_equals_score(space: SearchSpace) -> None:
    c = Controller(space, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    samples = [c.sample(g) for _ in range(6)]
    for genotype, actions, _ in samples:
        assert space.encode(genotype) == actions
    log_prob, entropy = c.score([actions for _, actions, _ in samples])
    expected = torch.tensor([lp for _, _, lp in samples])
    torch.testing.assert_close(log_prob.detach(), expected, rtol=1e-5, atol=1e-5)
    one, _ = c.score([samples[3][1]])
    torch.testing.assert_close(one.detach()[0], expected[3], rtol=1e-5, atol=1e-5)
    assert entropy.shape == (6,)


def test_initial_policy_is_nearly_uniform(space: SearchSpace) -> None:
    c = Controller(space)
    uniform = sum(math.log(n) for n in space.action_sizes())
    _, actions, log_prob = c.sample(torch.Generator().manual_seed(0))
    _, entropy = c.score([actions])
    assert 0.95 * uniform < float(entropy.detach()[0]) <= uniform + 1e-4
    assert abs(log_prob + uniform) < 0.1 * uniform


def test_sampling_is_reproducible_and_seed_dependent(space: SearchSpace) -> None:
    c = Controller(space)
    a = [c.sample(torch.Generator().manual_seed(5))[1] for _ in range(2)]
    b = c.sample(torch.Generator().manual_seed(6))[1]
    assert a[0] == a[1]
    assert a[0] != b


def test_sequence_matches_the_cell_step_by_step(space: SearchSpace) -> None:
    c = Controller(space)
    inputs = torch.randn(3, 7, c.hidden_size)
    h = c_state = torch.zeros(3, c.hidden_size)
    steps = []
    for t in range(7):
        h, c_state = c.lstm(inputs[:, t], (h, c_state))
        steps.append(h)
    torch.testing.assert_close(c._sequence(inputs), torch.stack(steps, 1), rtol=1e-5, atol=1e-6)


def test_score_is_differentiable_for_every_decision(space: SearchSpace) -> None:
    c = Controller(space)
    actions = [space.sample_actions(random.Random(i)) for i in range(3)]
    log_prob, entropy = c.score(actions)
    (log_prob.sum() + entropy.sum()).backward()
    grad = c.head.weight.grad
    for t in range(len(c.sizes)):  # every position's head gets a gradient
        assert float(grad[c.offsets[t] : c.offsets[t + 1]].abs().sum()) > 0
    assert c.lstm.weight_ih.grad is not None and c.go.grad is not None
    assert float(c.embedding.weight.grad.abs().sum()) > 0


def test_score_rejects_bad_actions(space: SearchSpace) -> None:
    c = Controller(space)
    with pytest.raises(ValueError, match="shape"):
        c.score([[0, 1, 2]])
    bad = [0] * space.num_actions
    bad[0] = 2  # block 0 may only read states 0 and 1
    with pytest.raises(ValueError, match="legal range"):
        c.score([bad])


def test_tanh_constant_bounds_the_logits() -> None:
    space = SearchSpace(num_blocks=2)
    c = Controller(space, tanh_constant=1e-4)
    with torch.no_grad():
        c.head.weight.mul_(1000)
    _, _, log_prob = c.sample(torch.Generator().manual_seed(0))
    uniform = -sum(math.log(n) for n in space.action_sizes())
    assert log_prob == pytest.approx(uniform, abs=1e-2)
