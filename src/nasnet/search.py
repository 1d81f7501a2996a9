"""The search loop: strategy -> executor -> store -> strategy, resumable.

:func:`run_search` keeps ``workers`` children training. Results are told to the strategy in the
order the children were proposed (one that arrives before an older child's is stored at once,
and waits), and right after each tell the strategy proposes children until :func:`lookahead` of
them are proposed and not yet told (``2 * workers - 1``: with one worker, one proposal per
tell; with more, a spare proposal per extra worker, so a child finishing before an older one
rarely leaves its worker idle). So what the strategy sees, and the children it proposes, depend
on the seed and ``workers`` only, never on which child happens to finish first. Every ask and
every tell gets the next number of the experiment's event sequence and is committed to the
store (together with the strategy's state when the strategy reports a checkpoint) before
anything else happens, so a search killed at any moment can be resumed exactly:

1. the strategy is rebuilt from the experiment's config and loads the newest saved state;
2. the asks and tells recorded after that state are replayed into it in their original order
   (an ask is re-drawn and must reproduce the stored proposal; a tell passes the stored
   result), which brings it to the state it had when the search stopped;
3. trials that were queued or running are submitted again under the same ids, and results
   stored but not yet told are told in their turn;
4. the loop continues until ``budget`` children are done.

A child whose canonical hash was already trained reuses that result (unless ``reuse`` is off);
the reused trial counts toward the budget and is told to the strategy. Failed children (an
exception, a non-finite accuracy, a dead worker process) are recorded with their error and do
not count; after ``max_failures`` of them (default ``2 * budget``) no new child is proposed,
the running ones are waited for, and the search stops with an error.

Only one driver runs an experiment at a time (:mod:`nasnet.lock`).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nasnet.evaluators import Evaluator, Task, cost_aware_reward, evaluator_for
from nasnet.executors import Executor, TrialFn, executor_class, make_executor
from nasnet.executors.base import call_safely
from nasnet.lock import ExperimentLock
from nasnet.options import OptionError
from nasnet.results import leaderboard
from nasnet.runtime import signal_handlers_kept, torch_threads
from nasnet.search_config import SearchConfig, check_saved_config, resolve_config, trial_seed
from nasnet.store import Store, StoreError, TrialRecord
from nasnet.strategies import Proposal, Strategy, make_strategy
from nasnet.strategies.base import state_digest, state_from_bytes, state_to_bytes
from nasnet.trials import TrialOutcome, TrialStatus


class SearchError(Exception):
    """The search had to stop; the message says why and what to do. ``field``, when set, is
    the option the message names as the way on (a command line shows its flag instead)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
    resumed: bool = False
    #: The evaluator's warning about the final ranking (stateful evaluators), if any.
    ranking_warning: str | None = None

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


class _Arrival(NamedTuple):
    """Where and when a result was produced (stored with it)."""

    worker: str
    started: float
    finished: float
    reused_from: int | None = None


def lookahead(workers: int) -> int:
    """How many children are proposed and not yet told, at most, with ``workers``."""
    return 2 * workers - 1


@dataclass
class Experiment:
    """An experiment opened for a search: its directory, resolved config and store."""

    directory: str
    config: SearchConfig
    store: Store
    resumed: bool

    def save_config(self) -> None:
        """Write the resolved config to the store. A resumed search does so once its saved
        state has loaded, so that a resume refused on a damaged state changes nothing."""
        self.store.set_config(self.config.to_dict())


@contextmanager
def open_experiment(directory: str, options: SearchConfig | dict[str, Any]) -> Iterator[Experiment]:
    """Lock, open (or create) and configure the experiment in ``directory`` (a resumed one's
    config is written by :meth:`Search.run` once its saved state has loaded).

    ``options`` is a whole :class:`SearchConfig`, or a dict of only the options given (nested
    as in :meth:`SearchConfig.to_dict`), the others keeping their saved values on resume.
    Raises :class:`~nasnet.lock.ExperimentLocked` while another driver runs it,
    :class:`~nasnet.options.OptionError` for a bad or conflicting option, and
    :class:`~nasnet.store.StoreError` for an unreadable store. The store is closed and the
    lock released on exit.
    """
    given = options.to_dict() if isinstance(options, SearchConfig) else options
    new_directory = not os.path.exists(directory)
    lock = ExperimentLock(directory)
    lock.acquire()
    store = None
    try:
        store = Store.open(directory) if Store.exists(directory) else None
        resumed = store is not None
        saved = None if store is None else _valid_saved_config(store)
        config = resolve_config(saved, given)
        config.build_evaluator().check_setup(_children_here_at_once(config))
        if store is None:
            store = Store.create(directory, config.to_dict())
        yield Experiment(directory, config, store, resumed)
    finally:
        if store is not None:
            store.close()
        lock.release()
        if store is None and new_directory:  # nothing was created: leave nothing behind
            lock.remove()
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def _valid_saved_config(store: Store) -> dict[str, Any]:
    """The store's config, refused (one line naming the store, not a flag) if it is not
    one a search could have written."""
    saved = store.config()
    try:
        check_saved_config(saved)
    except (OptionError, TypeError, ValueError) as err:
        raise StoreError(
            f"{store.path}: the saved config is not valid ({err}); restore the experiment "
            "from a copy"
        ) from None
    return saved


class Search:
    """One run of the search loop over an opened :class:`Experiment`."""

    def __init__(
        self,
        experiment: Experiment,
        executor: Executor | None = None,
        on_event: EventFn | None = None,
        fn: TrialFn | None = None,
    ) -> None:
        self.experiment = experiment
        self.config = config = experiment.config
        self.store = experiment.store
        self.on_event = on_event
        self.space = config.space
        self.strategy: Strategy = make_strategy(
            config.strategy, self.space, config.seed, **config.strategy_options
        )
        self.evaluator = driver_evaluator(config)
        self.executor = executor
        self.fn = fn
        #: Proposals of the trials asked and not yet told.
        self.proposals: dict[int, Proposal] = {}
        #: Trials asked and not yet told, in the order asked (the order they are told in).
        self.untold: collections.deque[int] = collections.deque()
        #: Asked trials waiting for a free worker, in the order asked.
        self.waiting: collections.deque[int] = collections.deque()
        #: Results not yet told: the outcome, and how to store it (``None``: stored already,
        #: as is every result that had to wait for an older trial).
        self.ready: dict[int, tuple[TrialOutcome, _Arrival | None]] = {}
        #: ``(tell_seq, metrics)`` of the done trials, in tell order (for task contexts).
        self.told_metrics: list[tuple[int, dict[str, Any]]] = []
        self.seq = self.store.next_seq()
        self.stats = SearchStats(budget=config.budget, resumed=experiment.resumed)

    # -- resume -------------------------------------------------------------------------------

    def restore(self) -> int:
        """Load the newest strategy state and replay the events after it; returns their count."""
        saved = self.store.last_state()
        state_id, seq = (saved[0], saved[1]) if saved else (None, 0)
        digest = None
        if self.evaluator.stateful:
            self.evaluator.reset_state(self.config.seed)
        if saved:
            try:
                state = state_from_bytes(saved[2])
                if self.evaluator.stateful:  # stateful evaluators: {"strategy", "evaluator"}
                    self.evaluator.load_state_dict(state["evaluator"])
                    state = state["strategy"]
                self.strategy.load_state_dict(state)
            except Exception as err:  # any failure: the blob cannot be this strategy's state
                raise StoreError(
                    f"{self.store.path}: saved strategy state {state_id} is damaged "
                    f"({type(err).__name__}); restore the experiment from a copy"
                ) from None
            digest = state_digest(self.strategy.state_dict())
        events = self.store.events_after(seq)
        for event_seq, kind, trial in events:
            if kind == "ask":
                self._replay_ask(trial)
            else:
                if self.evaluator.stateful and trial.reused_from is None:
                    with self._child_threads():
                        self._remeasure(trial)
                with self.store.transaction():
                    self._tell(_proposal_of(trial), _told_reward(trial), event_seq)
        if saved or events:
            self.store.record_resume(state_id, digest, len(events))
        return len(events)

    def _child_threads(self) -> contextlib.AbstractContextManager[None]:
        """The thread count children run with (the executor's ``threads``): a stateful
        evaluator's replays and final scores in the driver must compute what its children
        computed, and float sums depend on the thread count."""
        options = executor_class(self.config.executor).Options.parse(self.config.executor_options)
        return torch_threads(getattr(options, "threads", None))

    def _replay_ask(self, trial: TrialRecord) -> None:
        proposal = self.strategy.ask()
        if proposal.actions != _proposal_of(trial).actions:
            raise SearchError(
                f"cannot resume: the strategy no longer proposes trial {trial.id}'s cell "
                "(was nasnet or a strategy option changed?); start a new experiment"
            )

    def _tell(self, proposal: Proposal, reward: float | None, seq: int) -> bool:
        """Tell the strategy; save its state (in the caller's transaction) when it asks.
        Returns whether a state was saved."""
        if not self.strategy.tell(proposal, reward):
            return False
        state = self.strategy.state_dict()
        if self.evaluator.stateful:  # the evaluator's state is saved with the strategy's
            state = {"strategy": state, "evaluator": self.evaluator.state_dict()}
        blob = state_to_bytes(state)
        self.store.save_state(seq, self.strategy.told, blob)
        return True

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> SearchStats:
        """Run until ``budget`` children are done; raises :class:`SearchError` on too many
        failures. The executor is shut down on return (or interruption), and trials still
        running are marked queued (they are trained again on resume)."""
        stats = self.stats
        told = [t for t in self.store.trials() if t.tell_seq is not None]
        done = [t for t in told if t.status is TrialStatus.DONE]
        self.told_metrics = sorted(((t.tell_seq or 0, t.metrics) for t in done),
                                   key=lambda item: item[0])  # fmt: skip
        stats.replayed = self.restore()
        if self.experiment.resumed:
            self.experiment.save_config()
        stats.finished, stats.failed = len(done), len(told) - len(done)
        for trial in done:
            if stats.best_reward is None or (trial.reward or 0) > stats.best_reward:
                stats.best_reward, stats.best_trial = trial.reward, trial.id
        try:
            self._emit("start", None)
            pending = self._unfinished()
            if stats.finished < self.config.budget:
                if self.executor is None:
                    self.executor = self._make_executor()
                self._take_up(pending)
                self._loop()
            if self.evaluator.stateful and stats.finished >= self.config.budget:
                with self._child_threads():
                    self._final_scores()
        finally:
            try:
                if self.executor is not None:  # a Ctrl-C here would replace why it stopped
                    with signal_handlers_kept((signal.SIGINT,), during=signal.SIG_IGN):
                        self.executor.shutdown()
            finally:
                self._requeue_running()
                self._emit("end", None)
        return stats

    def _make_executor(self) -> Executor:
        config = self.config
        try:
            slots = min(config.workers, config.budget - self.stats.finished)  # no idle workers
            return make_executor(config.executor, slots, self.fn, config.executor_options)
        except OptionError:
            raise
        except (ImportError, RuntimeError, ValueError) as err:
            raise SearchError(f"executor {config.executor}: {err}") from None

    def _unfinished(self) -> list[TrialRecord]:
        """Trials of earlier sessions not yet told (queued, running, or finished while an
        older one ran), in the order asked; those that were running are marked queued."""
        pending = [t for t in self.store.trials() if t.tell_seq is None]
        with self.store.transaction():
            for trial in pending:
                self.store.requeue(trial.id)
        return pending

    def _requeue_running(self) -> None:
        with self.store.transaction():
            for trial_id in self.proposals:
                self.store.requeue(trial_id)

    def _take_up(self, pending: list[TrialRecord]) -> None:
        """Take up the untold trials of earlier sessions: results wait for their turn to be
        told, unfinished trials for a worker."""
        for trial in pending:
            self.proposals[trial.id] = _proposal_of(trial)
            self.untold.append(trial.id)
            if trial.status is TrialStatus.DONE:
                self.ready[trial.id] = (TrialOutcome.done(_told_reward(trial), trial.metrics), None)
            elif trial.status is TrialStatus.FAILED:
                self.ready[trial.id] = (TrialOutcome.failed(trial.error, trial.metrics), None)
            else:
                self.waiting.append(trial.id)

    def _loop(self) -> None:
        config, stats = self.config, self.stats
        assert self.executor is not None
        self._ask_ahead()
        while stats.finished < config.budget:
            self._submit_waiting()
            if self._tell_ready():
                continue
            if self.executor.running == 0:  # nothing to wait for: the failure limit stopped asks
                raise SearchError(
                    f"stopped: {stats.failed} children failed (limit {config.failure_limit}, "
                    f"max_failures); last error: {stats.last_error or 'see nasnet show'}; "
                    "fix the cause, then raise max_failures to go on",
                    field="max_failures",
                )
            stats.running = self.executor.running
            result = self.executor.next_result(timeout=0.5)
            if result is None:
                self._emit("wait", None)
            else:
                self._receive(result.trial_id, result.outcome, result.worker, result.started,
                              result.finished)  # fmt: skip

    def _ask_ahead(self) -> None:
        """Ask while fewer than :func:`lookahead` trials are untold, within the budget and
        the failure limit. Called only after a tell, so the asks depend on the tells alone."""
        config, stats = self.config, self.stats
        while (
            len(self.untold) < lookahead(config.workers)
            and stats.finished + len(self.untold) < config.budget
            and stats.failed < config.failure_limit
        ):
            self._ask()

    def _submit_waiting(self) -> None:
        """Start waiting trials on free workers, each only while the trials told before it
        could still leave the budget unmet (after a lowered budget, the others stay queued)."""
        assert self.executor is not None
        while (
            self.waiting
            and self.executor.running < self.config.workers
            and self.stats.finished + self.untold.index(self.waiting[0]) < self.config.budget
        ):
            trial = self.store.trial(self.waiting.popleft())
            assert trial is not None
            with self.store.transaction():
                self.store.mark_running(trial.id)
            self._submit(trial.id, trial.genotype_dict(), trial.seed, trial.ask_seq)

    def _tell_ready(self) -> bool:
        """Tell the results whose turn it is, asking after each; returns whether any was."""
        told = False
        while self.untold and self.untold[0] in self.ready:
            trial_id = self.untold.popleft()
            self._tell_result(trial_id, self.ready.pop(trial_id))
            self._ask_ahead()
            told = True
        return told

    def _ask(self) -> None:
        proposal = self.strategy.ask()
        trial_id = self.store.next_trial_id()
        seed = trial_seed(self.config.seed, trial_id)
        genotype_hash = proposal.genotype.canonical_hash()
        cached = self.store.done_by_hash(genotype_hash) if self.config.reuse else None
        ask_seq = self._next_seq()
        with self.store.transaction():
            self.store.add_trial(trial_id, proposal.genotype, proposal.to_dict(), seed, ask_seq,
                                 genotype_hash)  # fmt: skip
        self.proposals[trial_id] = proposal
        self.untold.append(trial_id)
        if cached is None:
            self.waiting.append(trial_id)
            return
        now = time.time()
        outcome = TrialOutcome.done(_told_reward(cached), cached.metrics)
        self._receive(trial_id, outcome, "reused", now, now, reused_from=cached.id)

    def _submit(self, trial_id: int, genotype: dict[str, Any], seed: int, ask_seq: int) -> None:
        assert self.executor is not None
        config = self.config
        task = Task(trial_id=trial_id, genotype=genotype, seed=seed, evaluator=config.evaluator,
                    options=config.evaluator_options, child=config.child.to_dict(),
                    space=self.space.to_dict(), context=self._task_context(ask_seq))  # fmt: skip
        self.executor.submit(trial_id, task)
        self.stats.running = self.executor.running
        self._emit("submit", None)

    def _task_context(self, ask_seq: int) -> dict[str, Any]:
        """What the evaluator derives from the results told before event ``ask_seq``."""
        finished = [metrics for seq, metrics in self.told_metrics if seq < ask_seq]
        return self.evaluator.task_context(finished)

    def _receive(
        self,
        trial_id: int,
        outcome: TrialOutcome,
        worker: str,
        started: float,
        finished: float,
        reused_from: int | None = None,
    ) -> None:
        """Keep a trial's outcome until its turn to be told (:meth:`_tell_ready`). One whose
        turn it is is stored with its tell, in one transaction (with one worker, every one:
        a resume then never finds a stored result the strategy was not told, which a stateful
        evaluator could not replay); any other is stored at once, so that a stop keeps it."""
        arrival = _Arrival(worker, started, finished, reused_from)
        if self.untold and self.untold[0] == trial_id:
            self.ready[trial_id] = (outcome, arrival)
            return
        with self.store.transaction():
            self.store.finish_trial(trial_id, outcome, None, *arrival)
        self.ready[trial_id] = (outcome, None)

    def _tell_result(self, trial_id: int, result: tuple[TrialOutcome, _Arrival | None]) -> None:
        """Tell the strategy a result, in one transaction with its tell number (and with the
        result itself, if not stored yet)."""
        outcome, arrival = result
        seq = self._next_seq()
        with self.store.transaction():
            if arrival is None:
                self.store.mark_told(trial_id, seq)
            else:
                self.store.finish_trial(trial_id, outcome, seq, *arrival)
            saved = self._tell(self.proposals[trial_id], outcome.reward, seq)
        # dropped from the untold proposals only once told: a stop while telling rolls the
        # transaction back, and the trial is then told on resume
        del self.proposals[trial_id]
        if saved:
            self.store.checkpoint()
        if outcome.ok:
            self.stats.note_done(trial_id, float(outcome.reward or 0.0))
            self.told_metrics.append((seq, outcome.metrics))
        else:
            self.stats.failed += 1
            self.stats.last_error = outcome.error
        if self.executor is not None:
            self.stats.running = self.executor.running
        trial = self.store.trial(trial_id)
        assert trial is not None
        kind = "reused" if trial.reused_from is not None else "done" if outcome.ok else "failed"
        self._emit(kind, trial)

    def _emit(self, kind: str, trial: TrialRecord | None) -> None:
        if self.on_event is not None:
            self.on_event(kind, self.stats, trial)

    # -- stateful evaluators (weight sharing; see Evaluator.stateful) -------------------------

    def _remeasure(self, trial: TrialRecord) -> None:
        """Measure a replayed child again, to bring the evaluator's state to where it was
        when the child was told (its stored result stays what the strategy was told)."""
        context = self._task_context(trial.ask_seq)
        outcome = call_safely(lambda g: self.evaluator.evaluate(g, trial.seed, context),
                              trial.genotype)  # fmt: skip
        if outcome.reward != _told_reward(trial):
            warnings.warn(
                f"trial {trial.id} measured {outcome.reward} on resume, {_told_reward(trial)} "
                "before "
                "(keep the thread count and device of the first session for exact resumes)",
                stacklevel=2,
            )

    def _final_scores(self) -> None:
        """Replace the reward of every done trial by its score under the evaluator's final
        state (one score per distinct cell); the search-time ones stay in the metrics as
        ``search_reward`` and ``search_val_accuracy``. Deterministic, so running it again
        (a resumed finished search) writes the same values."""
        options = self.evaluator.options
        finals: dict[str, dict[str, Any] | None] = {}
        with self.store.transaction():
            for trial in self.store.trials(TrialStatus.DONE):
                if trial.hash not in finals:
                    finals[trial.hash] = self.evaluator.final_metrics(trial.genotype)
                final = finals[trial.hash]
                if final is None or trial.tell_seq is None:
                    continue
                metrics = {
                    **trial.metrics,
                    "search_reward": trial.metrics.get("search_reward", trial.reward),
                    "search_val_accuracy": trial.metrics.get(
                        "search_val_accuracy", trial.metrics.get("val_accuracy")
                    ),
                    **final,
                }
                reward = cost_aware_reward(
                    float(final["val_accuracy"]), metrics.get("mult_adds"),
                    options.mult_adds_target, options.cost_weight,
                )  # fmt: skip
                outcome = TrialOutcome.done(reward, metrics)
                self.store.finish_trial(
                    trial.id, outcome, trial.tell_seq, trial.worker, trial.started,
                    trial.finished, trial.reused_from,
                )  # fmt: skip
        self.store.checkpoint()
        best = leaderboard(self.store.trials(), 1)
        if best:
            self.stats.best_reward, self.stats.best_trial = best[0].reward, best[0].id
        self.stats.ranking_warning = self.evaluator.ranking_warning(
            [final for final in finals.values() if final is not None]
        )


def _children_here_at_once(config: SearchConfig) -> int:
    """Children that train on this machine at the same time (0: they train elsewhere)."""
    if not config.build_executor_class().runs_children_here:
        return 0
    return min(config.workers, config.budget)


def _told_reward(trial: TrialRecord) -> float | None:
    """The reward the strategy was told for ``trial`` (a stateful evaluator's final re-scoring
    replaces ``reward`` and keeps the told one as ``search_reward``)."""
    return trial.metrics.get("search_reward", trial.reward)


def driver_evaluator(config: SearchConfig) -> Evaluator:
    """The driver's evaluator: for a stateful one, the very instance the in-process executor's
    tasks use (``evaluator_for`` caches one per configuration and process), so after
    :func:`run_search` it holds the search's final state (a weight-sharing search's weights)."""
    evaluator = config.build_evaluator()
    if not evaluator.stateful:
        return evaluator
    task = Task(trial_id=0, genotype={}, seed=0, evaluator=config.evaluator,
                options=config.evaluator_options, child=config.child.to_dict(),
                space=config.space.to_dict())  # fmt: skip
    return evaluator_for(task)


def _proposal_of(trial: TrialRecord) -> Proposal:
    try:
        return Proposal.from_dict(trial.proposal)
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"trial {trial.id}'s proposal is damaged ({type(err).__name__}: {err}); restore "
            "the experiment from a copy or start a new one"
        ) from None


def run_search(
    directory: str,
    config: SearchConfig | dict[str, Any],
    executor: Executor | None = None,
    on_event: EventFn | None = None,
    fn: TrialFn | None = None,
) -> SearchStats:
    """Create or resume the experiment in ``directory`` and run it to its budget.

    ``config`` is a :class:`SearchConfig` or a dict of the options given (see
    :func:`open_experiment`). A script calling it needs ``if __name__ == "__main__":``: the
    local executor's worker processes start by importing the main script, and one that would
    run the search again is stopped with a :class:`SearchError` saying so.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SearchError(
            "run_search was called while a worker process starts, which imports the main "
            "script: put the search under 'if __name__ == \"__main__\":'"
        )
    with open_experiment(directory, config) as experiment:
        return Search(experiment, executor, on_event, fn).run()


__all__ = [
    "EventFn",
    "Experiment",
    "Search",
    "SearchError",
    "SearchStats",
    "driver_evaluator",
    "open_experiment",
    "run_search",
]
