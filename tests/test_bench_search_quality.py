"""The pure statistics of bench/search_quality.py against hand-computed values (no training)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import bench_module


@pytest.fixture(scope="module")
def bench():
    """The benchmark as the module ``search_quality`` (importable by its worker processes)."""
    with bench_module("search_quality") as module:
        yield module


def test_kendall_tau_b_with_a_tie(bench):
    # x has one tied pair (2, 2); the other 5 pairs are all concordant:
    # tau_b = 5 / sqrt((6 - 1) * (6 - 0)) = 5 / sqrt(30)
    assert bench.kendall_tau([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))


def test_kendall_tau_of_a_permutation(bench):
    # pairs of (1,2,3) vs (3,1,2): two discordant, one concordant -> (1 - 2) / 3
    assert bench.kendall_tau([1, 2, 3], [3, 1, 2]) == pytest.approx(-1 / 3)
    assert bench.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_rho(bench):
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = (-2, 1, 1): 1 - 36 / 24
    assert bench.spearman_rho([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    # ties take their average rank: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4);
    # Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert bench.spearman_rho([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_constant_input_is_nan(bench):
    assert math.isnan(bench.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(bench.spearman_rho([1, 2, 3], [5, 5, 5]))


def test_t_interval(bench):
    # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.7764451051977987
    interval = bench.t_interval([1, 2, 3, 4, 5])
    assert interval.mean == pytest.approx(3.0)
    assert interval.half == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5))
    assert interval.n == 5
    assert str(interval) == "3.000 ± 1.963"
    # two values: t(0.975, 1) = 12.706204736174698, s = sqrt(2) / 2 * |a - b|
    two = bench.t_interval([0.5, 0.7])
    assert two.half == pytest.approx(12.706204736174698 * math.sqrt(0.02) / math.sqrt(2))


def test_t_interval_of_too_few_values(bench):
    one = bench.t_interval([0.8])
    assert one.mean == 0.8 and math.isnan(one.half)
    assert str(one) == "0.800 (n=1)"
    assert str(bench.t_interval([])) == "-"


def test_noise_summary(bench):
    # each cell's two seeds differ by 0.2: variance 0.02, pooled std sqrt(0.02);
    # between cells: stdev(0.1, 0.3, 0.5, 0.7) = sqrt(0.2 / 3)
    noise = bench.noise_summary([[0.5, 0.7], [0.2, 0.4]], [0.1, 0.3, 0.5, 0.7])
    ratio = math.sqrt(0.02) / math.sqrt(0.2 / 3)
    assert noise["within_std"] == pytest.approx(math.sqrt(0.02))
    assert noise["between_std"] == pytest.approx(math.sqrt(0.2 / 3))
    assert noise["ratio"] == pytest.approx(ratio)
    assert noise["cell_share"] == pytest.approx(1 - ratio**2)


def test_curves(bench):
    assert bench.mean_top_curve([0.2, 0.6, 0.4, 0.1], 2) == pytest.approx([0.2, 0.4, 0.5, 0.5])
    assert bench.mean_curve([[1, 2, 3], [3, 4]]) == pytest.approx([2, 3])


def test_bootstrap_interval_brackets_a_perfect_correlation(bench):
    low, high = bench.bootstrap_interval([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12],
                                         bench.spearman_rho, resamples=200)  # fmt: skip
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_strategy_options_parsing(bench):
    options = bench.strategy_options(["ppo:lr=0.01", "evolution:population=7"],
                                     ["ppo", "evolution"], quick=True)  # fmt: skip
    assert options["ppo"] == {"lr": "0.01", "batch_size": 3}
    assert options["evolution"] == {"population": "7", "sample_size": 2}
    with pytest.raises(ValueError, match="S:NAME=VALUE"):
        bench.strategy_options(["lr=0.01"], ["ppo"], quick=False)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        bench.strategy_options(["ppo:lr"], ["ppo"], quick=False)


def test_fresh_seeds_are_not_search_seeds(bench):
    seeds = {bench.fresh_seed("retrain", "abc", i) for i in range(3)}
    assert len(seeds) == 3
    assert bench.fresh_seed("retrain", "abc", 0) != bench.fresh_seed("noise", "abc", 0)


def test_stop_arms_add_early_stopping_to_their_strategy(bench):
    args = bench.parse_args(["--quick", "--strategies", "random,random+stop",
                             "--stop-quantile", "0.25"])  # fmt: skip
    plain, stop = (bench.search_config(args, arm, 0) for arm in ("random", "random+stop"))
    assert plain.strategy == stop.strategy == "random"
    assert plain.evaluator_options["stop_quantile"] is None  # not the searches' default
    assert stop.evaluator_options["stop_quantile"] == 0.25
    with pytest.raises(bench.OptionError, match="STRATEGY\\+stop"):
        bench.search_config(args, "random+fast", 0)


def test_tiny_run_prints_every_table(bench, tmp_path, capsys):
    """Two arms, one seed, two children each: searches, retraining, fidelity, noise, JSON."""
    out = tmp_path / "q.json"
    bench.main(["--quick", "--strategies", "random,ppo", "--seeds", "1", "--budget", "3",
                "--workers", "1", "--top-k", "1", "--retrain-epochs", "1", "--fidelity-cells",
                "3", "--noise-cells", "1", "--noise-seeds", "2", "--out", str(tmp_path / "runs"),
                "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    for heading in ("| strategy |", "| proxy mean top-10 / best so far", "Kendall tau-b",
                    "proxy noise"):  # fmt: skip
        assert heading in printed
    result = json.loads(out.read_text())
    assert {s["strategy"] for s in result["searches"]} == {"random", "ppo"}
    assert all(s["children"] == 3 for s in result["searches"])
    ppo = next(s for s in result["searches"] if s["strategy"] == "ppo")
    assert ppo["strategy_options"]["settings"] == "small"
    assert result["fidelity"]["cells"] >= 3
