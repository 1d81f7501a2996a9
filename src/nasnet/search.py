"""The search loop: strategy -> executor -> store -> strategy, resumable.

:func:`run_search` keeps ``workers`` children training: whenever one finishes, its result is
stored and told to the strategy, and a new child is proposed. Every ask and every tell gets the
next number of the experiment's event sequence and is committed to the store (together with
the strategy's state when the strategy reports a checkpoint) before anything else happens, so
a search killed at any moment can be resumed exactly:

1. the strategy is rebuilt from the experiment's config and loads the newest saved state;
2. the asks and tells recorded after that state are replayed into it in their original order
   (an ask is re-drawn and must reproduce the stored proposal; a tell passes the stored
   result), which brings it to the state it had when the search stopped;
3. trials that were queued or running are submitted again under the same ids;
4. the loop continues until ``budget`` children are done.

A child whose canonical hash was already trained reuses that result (unless ``reuse`` is off);
the reused trial counts toward the budget and is told to the strategy. Failed children (an
exception, a non-finite accuracy, a dead worker process) are recorded with their error and do
not count; after ``max_failures`` of them (default ``2 * budget``) no new child is proposed,
the running ones are waited for, and the search stops with an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nasnet.executors import Executor, TrialFn, TrialResult, make_executor
from nasnet.space import SearchSpace
from nasnet.store import Store, TrialRecord
from nasnet.strategies import STRATEGIES, Proposal, Strategy, make_strategy
from nasnet.strategies.base import state_digest, state_from_bytes, state_to_bytes


class SearchError(Exception):
    """The search cannot start or had to stop; the message says why and what to do."""


@dataclass
class SearchConfig:
    """Every option of an experiment (saved in the store as JSON).

    Options in :data:`MUTABLE_OPTIONS` may change when a search is resumed; the others
    define the experiment and must stay as they were.
    """

    strategy: str = "ppo"
    dataset: str = "digits"
    budget: int = 20
    workers: int = 2
    seed: int = 0
    blocks: int = 5
    evaluator: str = "train"
    executor: str = "local"
    reuse: bool = True
    threads: int | None = 1
    max_failures: int | None = None
    child_cells: int = 1
    child_filters: int = 8
    child_epochs: int = 2
    child_batch_size: int | None = None
    child_lr: float | None = None
    image_size: int | None = None
    controller_lr: float | None = None
    controller_batch: int | None = None
    ppo_epochs: int | None = None
    entropy_weight: float | None = None
    population: int | None = None
    sample_size: int | None = None
    mult_adds_target: float | None = None
    cost_weight: float = 0.0
    toy_delay: float = 0.0
    toy_fail_rate: float = 0.0
    toy_crash_rate: float = 0.0
    toy_noise: float = 0.0
    toy_target_seed: int = 0
    ray_address: str | None = None
    cpus_per_child: float = 1.0
    gpus_per_child: float = 0.0
    max_retries: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SearchError(f"unknown search option(s): {', '.join(unknown)}")
        return cls(**data)

    def check(self) -> None:
        """Raise :class:`SearchError` naming the first bad option."""
        if self.strategy not in STRATEGIES:
            raise SearchError(
                f"--strategy: unknown strategy {self.strategy!r}; choose {', '.join(STRATEGIES)}"
            )
        for name in ("budget", "workers", "blocks", "child_cells", "child_filters", "child_epochs"):
            if getattr(self, name) < 1:
                raise SearchError(f"{flag(name)}: must be at least 1, got {getattr(self, name)}")
        for name, strategies in STRATEGY_OPTIONS.items():
            if getattr(self, name) is not None and self.strategy not in strategies:
                raise SearchError(
                    f"{flag(name)}: applies to {' and '.join(strategies)}, "
                    f"not to strategy {self.strategy!r}"
                )
        from nasnet.evaluators import EVALUATORS
        from nasnet.executors import executor_names

        if self.evaluator not in EVALUATORS:
            raise SearchError(f"--evaluator: unknown {self.evaluator!r}; choose train or toy")
        if self.executor not in executor_names():
            raise SearchError(
                f"--executor: unknown {self.executor!r}; choose {', '.join(executor_names())}"
            )
        if self.cost_weight < 0 or (
            self.mult_adds_target is not None and self.mult_adds_target <= 0
        ):
            raise SearchError("--cost-weight must be >= 0 and --mult-adds-target > 0")
        if not 0 <= self.toy_fail_rate <= 1 or not 0 <= self.toy_crash_rate <= 1:
            raise SearchError("--toy-fail-rate and --toy-crash-rate must be between 0 and 1")
        if self.cpus_per_child <= 0 or self.gpus_per_child < 0 or self.max_retries < 0:
            raise SearchError(
                "--cpus-per-child must be positive; --gpus-per-child and --max-retries >= 0"
            )
        if self.toy_crash_rate and self.executor == "inprocess":
            raise SearchError("--toy-crash-rate: needs a process executor (--executor local)")

    def executor_options(self) -> dict[str, Any]:
        """Keyword arguments of the executor beyond workers and threads (Ray's resources)."""
        if self.executor != "ray":
            return {}
        return {
            "address": self.ray_address,
            "cpus_per_child": self.cpus_per_child,
            "gpus_per_child": self.gpus_per_child,
            "max_retries": self.max_retries,
        }

    def strategy_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`make_strategy` (None = the strategy's default)."""
        names = {
            "controller_lr": "lr",
            "controller_batch": "batch_size",
            "ppo_epochs": "epochs",
            "entropy_weight": "entropy_weight",
            "population": "population",
            "sample_size": "sample_size",
        }
        return {
            names[key]: getattr(self, key)
            for key, strategies in STRATEGY_OPTIONS.items()
            if self.strategy in strategies and getattr(self, key) is not None
        }

    def evaluator_options(self, space: SearchSpace) -> dict[str, Any]:
        """The ``options`` passed to :func:`nasnet.evaluators.run_trial`."""
        options: dict[str, Any] = {
            "mult_adds_target": self.mult_adds_target,
            "cost_weight": self.cost_weight,
            # worker processes only: in process, training keeps the driver's thread count
            "threads": self.threads if self.executor != "inprocess" else None,
        }
        if self.evaluator == "toy":
            options.update(
                space=space.to_dict(),
                toy_delay=self.toy_delay,
                toy_fail_rate=self.toy_fail_rate,
                toy_crash_rate=self.toy_crash_rate,
                toy_noise=self.toy_noise,
                toy_target_seed=self.toy_target_seed,
            )
        else:
            options.update(
                dataset=self.dataset,
                child_cells=self.child_cells,
                child_filters=self.child_filters,
                child_epochs=self.child_epochs,
                child_batch_size=self.child_batch_size,
                child_lr=self.child_lr,
                image_size=self.image_size,
                # a Ray child given a GPU sees it through CUDA_VISIBLE_DEVICES
                device="auto" if self.executor == "ray" and self.gpus_per_child > 0 else "cpu",
            )
        return options

    @property
    def failure_limit(self) -> int:
        return self.max_failures if self.max_failures is not None else 2 * self.budget


#: Options that may differ between an experiment and the command that resumes it.
MUTABLE_OPTIONS = frozenset(
    {
        "budget",
        "workers",
        "executor",
        "reuse",
        "threads",
        "max_failures",
        "toy_delay",
        "ray_address",
        "cpus_per_child",
        "gpus_per_child",
        "max_retries",
    }
)

#: Strategy options -> the strategies they apply to.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "controller_lr": ("ppo", "reinforce"),
    "controller_batch": ("ppo", "reinforce"),
    "ppo_epochs": ("ppo",),
    "entropy_weight": ("ppo", "reinforce"),
    "population": ("evolution",),
    "sample_size": ("evolution",),
}


def flag(option: str) -> str:
    """The command-line flag of a config option."""
    return "--no-reuse" if option == "reuse" else "--" + option.replace("_", "-")


def resolve_config(saved: dict[str, Any] | None, given: dict[str, Any]) -> SearchConfig:
    """The config of a new (``saved`` None) or resumed experiment.

    ``given`` holds only the options set on the command line. For a resumed experiment the
    others keep their saved values, and a given value that differs from the saved one is an
    error naming the option, unless the option is in :data:`MUTABLE_OPTIONS`.
    """
    if saved is None:
        config = SearchConfig.from_dict(given)
    else:
        merged = SearchConfig.from_dict(saved).to_dict()
        for key, value in given.items():
            if key not in merged:
                raise SearchError(f"unknown search option {key!r}")
            if key not in MUTABLE_OPTIONS and value != merged[key]:
                was = "without it" if merged[key] is None else f"with {merged[key]!r}"
                raise SearchError(
                    f"{flag(key)}: this experiment was created {was}, not {value!r}; "
                    "leave the option out to resume it, or use a new --out"
                )
            merged[key] = value
        config = SearchConfig.from_dict(merged)
    config.check()
    return config


def trial_seed(experiment_seed: int, trial_id: int) -> int:
    """The seed of a trial: a fixed function of the experiment's seed and the trial id."""
    digest = hashlib.sha256(f"nasnet-trial:{experiment_seed}:{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class SearchStats:
    """Progress of a search, passed to the ``on_event`` callback."""

    budget: int
    finished: int = 0
    failed: int = 0
    running: int = 0
    best_reward: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.time)
    finished_this_session: int = 0
    last_error: str | None = None
    replayed: int = 0

    @property
    def children_per_hour(self) -> float:
        hours = max(time.time() - self.started, 1e-9) / 3600
        return self.finished_this_session / hours

    def note_done(self, trial_id: int, reward: float) -> None:
        self.finished += 1
        self.finished_this_session += 1
        if self.best_reward is None or reward > self.best_reward:
            self.best_reward, self.best_trial = reward, trial_id


#: ``on_event(kind, stats, trial)``: kind is start, submit, done, failed, reused, wait, end.
EventFn = Callable[[str, SearchStats, "TrialRecord | None"], None]


class Search:
    """One run of the search loop over the experiment in ``directory``."""

    def __init__(
        self,
        directory: str,
        config: SearchConfig,
        executor: Executor | None = None,
        on_event: EventFn | None = None,
        fn: TrialFn | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.on_event = on_event
        self.space = SearchSpace(num_blocks=config.blocks)
        if Store.exists(directory):
            self.store = Store.open(directory)
            resolve_config(self.store.config(), config.to_dict())  # same experiment?
            self.store.set_config(config.to_dict())
        else:
            self.store = Store.create(directory, config.to_dict())
        self.strategy: Strategy = make_strategy(
            config.strategy, self.space, config.seed, **config.strategy_options()
        )
        self.executor = executor
        self.fn = fn
        self.proposals: dict[int, Proposal] = {}
        self.seq = self.store.next_seq()
        self.stats = SearchStats(budget=config.budget)

    # -- resume -------------------------------------------------------------------------------

    def restore(self) -> int:
        """Load the newest strategy state and replay the events after it; returns their count."""
        saved = self.store.last_state()
        state_id, seq = (saved[0], saved[1]) if saved else (None, 0)
        digest = None
        if saved:
            self.strategy.load_state_dict(state_from_bytes(saved[2]))
            digest = state_digest(self.strategy.state_dict())
        events = self.store.events_after(seq)
        for event_seq, kind, trial in events:
            if kind == "ask":
                self._replay_ask(trial)
            else:
                reward = trial.reward if trial.status == "done" else None
                if self.strategy.tell(Proposal.from_dict(trial.proposal), reward):
                    with self.store.transaction():
                        self._save_state(event_seq)
        if saved or events:
            self.store.record_resume(state_id, digest, len(events))
        return len(events)

    def _replay_ask(self, trial: TrialRecord) -> None:
        proposal = self.strategy.ask()
        if proposal.data.get("actions") != trial.proposal["data"].get("actions"):
            raise SearchError(
                f"cannot resume: the strategy no longer proposes trial {trial.id}'s cell "
                "(was nasnet or a strategy option changed?); start a new --out"
            )

    def _save_state(self, seq: int) -> None:
        blob = state_to_bytes(self.strategy.state_dict())
        self.store.save_state(seq, self.strategy.told, blob)

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> SearchStats:
        """Run until ``budget`` children are done; raises :class:`SearchError` on too many
        failures. The executor is shut down on return (or interruption)."""
        stats = self.stats
        stats.replayed = self.restore()
        counts = self.store.counts()
        stats.finished, stats.failed = counts["done"], counts["failed"]
        for trial in self.store.trials("done"):
            if stats.best_reward is None or (trial.reward or 0) > stats.best_reward:
                stats.best_reward, stats.best_trial = trial.reward, trial.id
        try:
            self._emit("start", None)
            pending = self._unfinished()
            if stats.finished < self.config.budget:
                if self.executor is None:
                    self.executor = self._make_executor()
                self._resubmit(pending)
                self._loop()
        finally:
            if self.executor is not None:
                self.executor.shutdown()
            self._emit("end", None)
            self.store.close()
        return stats

    def _make_executor(self) -> Executor:
        config = self.config
        try:
            return make_executor(
                config.executor,
                config.workers,
                config.threads,
                self.fn,
                **config.executor_options(),
            )
        except (ImportError, RuntimeError, ValueError) as err:
            raise SearchError(f"--executor {config.executor}: {err}") from None

    def _unfinished(self) -> list[TrialRecord]:
        """Queued or running trials of earlier sessions: those within the budget, to be run
        again; the others are marked queued (a lowered budget leaves them for later)."""
        pending = [t for t in self.store.trials() if t.status in ("queued", "running")]
        room = max(0, self.config.budget - self.stats.finished)
        with self.store.transaction():
            for trial in pending[room:]:
                self.store.requeue(trial.id)
        return pending[:room]

    def _resubmit(self, pending: list[TrialRecord]) -> None:
        for trial in pending:
            self.proposals[trial.id] = Proposal.from_dict(trial.proposal)
            with self.store.transaction():
                self.store.mark_running(trial.id)
            self._submit(trial.id, trial.genotype.to_dict(), trial.seed)

    def _loop(self) -> None:
        config, stats = self.config, self.stats
        assert self.executor is not None
        while stats.finished < config.budget:
            while (
                self.executor.running < config.workers
                and stats.finished + self.executor.running < config.budget
                and stats.failed < config.failure_limit
            ):
                self._ask()
            if stats.finished >= config.budget:
                break
            if self.executor.running == 0:  # the failure limit stopped new children
                raise SearchError(
                    f"stopped: {stats.failed} children failed (limit {config.failure_limit}, "
                    f"--max-failures); last error: {stats.last_error or 'see nasnet show'}"
                )
            stats.running = self.executor.running
            result = self.executor.next_result(timeout=0.5)
            if result is None:
                self._emit("wait", None)
            else:
                self._finish(result)

    def _ask(self) -> None:
        proposal = self.strategy.ask()
        trial_id = self.store.next_trial_id()
        seed = trial_seed(self.config.seed, trial_id)
        genotype = proposal.genotype
        genotype_hash = genotype.canonical_hash()
        cached = self.store.done_by_hash(genotype_hash) if self.config.reuse else None
        with self.store.transaction():
            self.store.add_trial(
                trial_id, genotype, proposal.to_dict(), seed, self._next_seq(), genotype_hash
            )
            if cached is None:
                self.store.mark_running(trial_id)
            else:
                self._record_reuse(trial_id, proposal, cached)
        if cached is None:
            self.proposals[trial_id] = proposal
            self._submit(trial_id, genotype.to_dict(), seed)
        else:
            self.stats.note_done(trial_id, float(cached.reward or 0.0))
            self._emit("reused", self.store.trial(trial_id))

    def _record_reuse(self, trial_id: int, proposal: Proposal, cached: TrialRecord) -> None:
        seq, now = self._next_seq(), time.time()
        metrics = dict(cached.metrics)
        self.store.finish_trial(trial_id, "done", cached.reward, metrics, None, seq, "reused",
                                now, now, reused_from=cached.id)  # fmt: skip
        if self.strategy.tell(proposal, cached.reward):
            self._save_state(seq)

    def _submit(self, trial_id: int, genotype: dict[str, Any], seed: int) -> None:
        assert self.executor is not None
        fn_args = {
            "evaluator": self.config.evaluator,
            "genotype": genotype,
            "seed": seed,
            "trial_id": trial_id,
            "options": self.config.evaluator_options(self.space),
        }
        self.executor.submit(trial_id, fn_args)
        self.stats.running = self.executor.running
        self._emit("submit", None)

    def _finish(self, result: TrialResult) -> None:
        outcome = _checked(result.outcome)
        proposal = self.proposals.pop(result.trial_id)
        done = outcome["status"] == "done"
        reward = float(outcome["reward"]) if done else None
        seq = self._next_seq()
        with self.store.transaction():
            self.store.finish_trial(
                result.trial_id, "done" if done else "failed", reward,
                outcome.get("metrics") or {}, outcome.get("error"), seq, result.worker,
                result.started, result.finished,
            )  # fmt: skip
            if self.strategy.tell(proposal, reward):
                self._save_state(seq)
        if reward is not None:
            self.stats.note_done(result.trial_id, reward)
        else:
            self.stats.failed += 1
            self.stats.last_error = outcome.get("error")
        assert self.executor is not None
        self.stats.running = self.executor.running
        self._emit("done" if done else "failed", self.store.trial(result.trial_id))

    def _emit(self, kind: str, trial: TrialRecord | None) -> None:
        if self.on_event is not None:
            self.on_event(kind, self.stats, trial)


def _checked(outcome: dict[str, Any]) -> dict[str, Any]:
    """A "done" outcome without a finite reward becomes a failure."""
    if outcome.get("status") != "done":
        return {**outcome, "status": "failed", "error": outcome.get("error") or "no error text"}
    reward = outcome.get("reward")
    if not isinstance(reward, int | float) or not math.isfinite(reward):
        return {**outcome, "status": "failed", "error": f"non-finite or missing reward: {reward!r}"}
    return outcome


def run_search(
    directory: str,
    config: SearchConfig,
    executor: Executor | None = None,
    on_event: EventFn | None = None,
    fn: TrialFn | None = None,
) -> SearchStats:
    """Create or resume the experiment in ``directory`` and run it to its budget."""
    config.check()
    return Search(directory, config, executor, on_event, fn).run()


# --------------------------------------------------------------------------- reading results

#: Short op names for one-line cell descriptions.
SHORT_OPS = {
    "identity": "id",
    "conv_1x3_3x1": "c13",
    "conv_1x7_7x1": "c17",
    "dil_conv_3x3": "dil3",
    "avg_pool_3x3": "avg3",
    "max_pool_3x3": "max3",
    "max_pool_5x5": "max5",
    "max_pool_7x7": "max7",
    "conv_1x1": "c1",
    "conv_3x3": "c3",
    "sep_conv_3x3": "sep3",
    "sep_conv_5x5": "sep5",
    "sep_conv_7x7": "sep7",
}


def describe_cell(cell: Any) -> str:
    """One line per cell: ``op(input)+op(input)`` per block (``|`` for concat combines)."""
    parts = []
    for b in cell.blocks:
        joint = "+" if b.combine == "add" else "|"
        one = f"{SHORT_OPS.get(b.op_1, b.op_1)}({b.input_1})"
        two = f"{SHORT_OPS.get(b.op_2, b.op_2)}({b.input_2})"
        parts.append(one + joint + two)
    return " ".join(parts)


def leaderboard(trials: list[TrialRecord], top: int | None = None) -> list[TrialRecord]:
    """Done trials with distinct cells (canonical hash), best reward first (ties: lower id);
    a cell's entry is the trial that trained it, not one that reused its result."""
    best: dict[str, TrialRecord] = {}
    for trial in trials:
        if trial.status != "done" or trial.reward is None:
            continue
        known = best.get(trial.hash)
        if known is None or (known.reused_from is not None and trial.reused_from is None):
            best[trial.hash] = trial
    ranked = sorted(best.values(), key=lambda t: (-(t.reward or 0.0), t.id))
    return ranked if top is None else ranked[:top]


def rewards_in_finish_order(trials: list[TrialRecord]) -> list[float]:
    """Rewards of the done trials in the order they finished (told to the strategy)."""
    done = [t for t in trials if t.status == "done" and t.reward is not None]
    done.sort(key=lambda t: (t.tell_seq if t.tell_seq is not None else 0, t.id))
    return [float(t.reward) for t in done]  # type: ignore[arg-type]


def mean_top(rewards: list[float], k: int) -> float | None:
    """Mean of the ``k`` best rewards (of all of them when fewer)."""
    if not rewards:
        return None
    best = sorted(rewards, reverse=True)[:k]
    return sum(best) / len(best)


__all__ = [
    "MUTABLE_OPTIONS",
    "Search",
    "SearchConfig",
    "SearchError",
    "SearchStats",
    "describe_cell",
    "flag",
    "leaderboard",
    "mean_top",
    "resolve_config",
    "rewards_in_finish_order",
    "run_search",
    "trial_seed",
]
