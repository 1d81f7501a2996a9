"""Search strategies: the ask/tell contract, exact state round trips, the paper's update rules,
and (on the toy evaluator) that learning strategies beat random search."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasnet.evaluators import toy_reward
from nasnet.options import OptionError
from nasnet.results import mean_top, rewards_in_finish_order
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.space import DECISIONS_PER_BLOCK, SearchSpace
from nasnet.store import Store
from nasnet.strategies import STRATEGIES, make_strategy
from nasnet.strategies.base import state_digest, state_from_bytes, state_to_bytes
from nasnet.strategies.evolution import mutate

SPACE = SearchSpace()
SMALL = {
    "ppo": {"batch_size": 5},
    "reinforce": {"batch_size": 5},
    "random": {"checkpoint_every": 5},
    "evolution": {"population": 6, "sample_size": 3, "checkpoint_every": 5},
}


def reward_of(proposal) -> float:
    return toy_reward(proposal.genotype, SPACE, 0, 0.02)


def drive(strategy, n: int, fail_every: int = 0) -> list[list[int]]:
    """Ask and tell ``n`` children; tells lag one ask behind (results arrive late)."""
    seen, waiting = [], []
    for i in range(n):
        waiting.append(strategy.ask())
        seen.append(waiting[-1].actions)
        if len(waiting) > 1:
            p = waiting.pop(0)
            strategy.tell(p, None if fail_every and i % fail_every == 0 else reward_of(p))
    return seen


def test_registry() -> None:
    assert set(STRATEGIES) == {"ppo", "reinforce", "random", "evolution"}
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("hill-climbing", SPACE, 0)
    with pytest.raises(ValueError, match="population"):
        make_strategy("ppo", SPACE, 0, population=3)
    assert make_strategy("ppo", SPACE, 0, lr=None).lr == 0.00035  # None = default


def test_paper_defaults() -> None:
    ppo = make_strategy("ppo", SPACE, 0)
    assert ppo.options() == {
        "lr": 0.00035, "batch_size": 20, "entropy_weight": 1e-5, "baseline_decay": 0.95,
        "hidden_size": 100, "temperature": None, "tanh_constant": None, "settings": "auto",
        "clip": 0.2, "epochs": 4,
    }  # fmt: skip
    evolution = make_strategy("evolution", SPACE, 0)
    assert (evolution.population_size, evolution.sample_size) == (100, 25)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_round_trip_continues_exactly(name: str) -> None:
    a = make_strategy(name, SPACE, 7, **SMALL[name])
    drive(a, 23, fail_every=4)
    blob = state_to_bytes(a.state_dict())
    b = make_strategy(name, SPACE, 7, **SMALL[name])
    b.load_state_dict(state_from_bytes(blob))
    assert state_digest(b.state_dict()) == state_digest(a.state_dict())
    assert drive(a, 17) == drive(b, 17)
    assert state_digest(a.state_dict()) == state_digest(b.state_dict())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_seeds_give_different_proposals(name: str) -> None:
    one = drive(make_strategy(name, SPACE, 1, **SMALL[name]), 5)
    two = drive(make_strategy(name, SPACE, 2, **SMALL[name]), 5)
    assert one != two


def test_policy_gradient_batches_baseline_and_failures() -> None:
    ppo = make_strategy("ppo", SPACE, 0, batch_size=3)
    proposals = [ppo.ask() for _ in range(5)]
    assert not ppo.tell(proposals[4], 0.5)  # out of order: the last one first
    assert ppo.baseline == 0.5
    assert not ppo.tell(proposals[0], None)  # a failed child is not learned from
    assert not ppo.tell(proposals[2], 0.9)
    assert ppo.batch[1]["advantage"] == pytest.approx(0.4)  # baseline at tell time
    assert ppo.baseline == pytest.approx(0.95 * 0.5 + 0.05 * 0.9)
    assert ppo.batch[1]["log_prob"] == proposals[2].data["log_prob"]  # the sampling-time one
    before = [p.detach().clone() for p in ppo.controller.parameters()]
    assert ppo.tell(proposals[1], 0.1)  # third result: update, checkpoint
    assert ppo.updates == 1 and ppo.batch == [] and (ppo.told, ppo.failed) == (4, 1)
    after = list(ppo.controller.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_ppo_clipped_objective() -> None:
    ppo = make_strategy("ppo", SPACE, 0)
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    advantage = torch.tensor([1.0, -1.0, 2.0])
    # min(r A, clip(r) A): 1.2 * 1, 0.8 * -1 (clip is the smaller), 1.1 * 2
    expected = -(1.2 - 0.8 + 2.2) / 3
    assert float(ppo._loss(new, old, advantage)) == pytest.approx(expected)


def test_reinforce_loss_is_the_policy_gradient() -> None:
    reinforce = make_strategy("reinforce", SPACE, 0)
    assert reinforce.lr == 0.0006
    log_prob = torch.tensor([-2.0, -1.0])
    advantage = torch.tensor([0.5, -1.0])
    assert float(reinforce._loss(log_prob, log_prob, advantage)) == pytest.approx(-(-1 + 1) / 2)


def test_random_strategy_is_uniform_sampling() -> None:
    strategy = make_strategy("random", SPACE, 3)
    rng = random.Random(3)
    for _ in range(5):
        assert strategy.ask().actions == SPACE.sample_actions(rng)


def test_evolution_initial_population_then_mutations_with_aging() -> None:
    evo = make_strategy("evolution", SPACE, 0, population=4, sample_size=2)
    first = [evo.ask() for _ in range(4)]
    assert all(p.data["parent"] is None for p in first)
    for i, p in enumerate(first):
        evo.tell(p, 0.1 * (i + 1))
    members = {p.id: p.actions for p in first}
    for step in range(10):
        child = evo.ask()
        parent = members[child.data["parent"]]
        pairs = zip(parent, child.actions, strict=True)
        diff = [i for i, (a, b) in enumerate(pairs) if a != b]
        assert len(diff) == 1 and diff[0] % DECISIONS_PER_BLOCK in (0, 1, 2, 3)
        evo.tell(child, 0.05 * step)
        members[child.id] = child.actions
        assert len(evo.population) == 4
    assert [m["id"] for m in evo.population] == list(range(10, 14))  # the oldest left first


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 5))
def test_mutation_changes_one_input_or_op(seed: int, blocks: int) -> None:
    space = SearchSpace(num_blocks=blocks)
    rng = random.Random(seed)
    actions = space.sample_actions(rng)
    child, description = mutate(space, actions, rng)
    changed = [i for i, (a, b) in enumerate(zip(actions, child, strict=True)) if a != b]
    assert len(changed) == 1
    position = changed[0]
    assert position % DECISIONS_PER_BLOCK != 4  # never the combine
    assert 0 <= child[position] < space.action_sizes()[position]
    assert "->" in description
    space.decode(child)


def _top10(directory: str) -> float:
    with Store.open(directory, readonly=True) as store:
        rewards = rewards_in_finish_order(store.trials())
    assert len(rewards) == 500
    return mean_top(rewards, 10)


@pytest.mark.slow
def test_learning_strategies_beat_random_search_on_the_toy_problem(tmp_path) -> None:
    """Budget 500, seeds 0-4: per seed, PPO's and evolution's mean top-10 reward beat random
    search's; small-budget options: PPO lr 0.005 (batch 20), evolution P=20, S=5."""
    options = {
        "random": {},
        "ppo": {"lr": 0.005},
        "evolution": {"population": 20, "sample_size": 5},
    }
    top10: dict[str, list[float]] = {name: [] for name in options}
    for name, extra in options.items():
        for seed in range(5):
            directory = str(tmp_path / f"{name}-{seed}")
            config = SearchConfig(
                strategy=name, evaluator="toy", executor="inprocess", budget=500, workers=4,
                seed=seed, evaluator_options={"noise": 0.02}, strategy_options=extra,
            )  # fmt: skip
            run_search(directory, config)
            top10[name].append(_top10(directory))
    for seed in range(5):
        assert top10["ppo"][seed] > top10["random"][seed] + 0.05, top10
        assert top10["evolution"][seed] > top10["random"][seed] + 0.05, top10
    assert statistics.mean(top10["ppo"]) > statistics.mean(top10["random"]) + 0.1
    config = SearchConfig(strategy="reinforce", evaluator="toy", executor="inprocess",
                          budget=500, workers=4, seed=0,
                          strategy_options={"lr": 0.005})  # fmt: skip
    stats = run_search(str(tmp_path / "reinforce"), config)
    assert stats.finished == 500 and stats.failed == 0
    assert _top10(str(tmp_path / "reinforce")) > max(top10["random"])


@pytest.mark.parametrize("name, options", [
    ("ppo", {"hidden_size": 10_000_000}), ("reinforce", {"batch_size": 10**20}),
    ("ppo", {"epochs": 100_000}), ("evolution", {"population": 10**9}),
])  # fmt: skip
def test_absurd_option_values_are_refused_before_anything_is_built(name, options):
    (field,) = options
    with pytest.raises(OptionError, match=r"must be in \[1, ") as info:
        make_strategy(name, SearchSpace(), 0, **options)
    assert info.value.field.endswith(field)
