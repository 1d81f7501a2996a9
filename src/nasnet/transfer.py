"""Transfer: retrain the best cells of a search, stacked deeper and wider, on a bigger dataset.

The paper retrained its top 250 cells to convergence to pick the best. ``run_transfer`` trains
each source cell with one :class:`~nasnet.train.TrainConfig` into ``OUT/rank-K-trial-ID/`` and
records the lineage (search experiment, trial id, canonical hash, search reward) in each run's
``lineage.json`` and in ``OUT/transfer.json``; the search directory gets a pointer in
``transfers.jsonl`` so that ``nasnet show`` can list what came of its cells. Rerunning resumes:
finished runs are kept and an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from nasnet.data import check_dataset_spec
from nasnet.files import FileFormatError, atomic_write_json, read_json
from nasnet.genotypes import GENOTYPES
from nasnet.lock import TRANSFER_BUSY, TRANSFER_LOCK_NAME, ExperimentLock
from nasnet.options import OptionError
from nasnet.space import Genotype, load_genotype
from nasnet.train import (
    CONFIG_FILE,
    TrainConfig,
    changed_fields,
    changed_option,
    check_training_memory,
    train,
)

TRANSFER_FILE = "transfer.json"
LINEAGE_FILE = "lineage.json"
POINTER_FILE = "transfers.jsonl"

#: The status of a run in ``transfer.json`` that has not finished (yet).
PENDING = "pending"

#: Cells retrained when no number is given and there is no transfer to resume.
DEFAULT_TOP = 2


class TransferError(ValueError):
    """The transfer source or output cannot be used; the message says why."""


@dataclass(frozen=True)
class Source:
    """A cell to retrain and where it came from."""

    genotype: Genotype
    experiment: str | None = None
    trial_id: int | None = None
    search_reward: float | None = None
    origin: str | None = None  # a genotype file, when not from a search

    @property
    def hash(self) -> str:
        return self.genotype.canonical_hash()

    def lineage(self) -> dict:
        return {
            "experiment": self.experiment,
            "trial_id": self.trial_id,
            "hash": self.hash,
            "search_reward": self.search_reward,
            "genotype_file": self.origin,
        }


def sources_from_search(directory: str, top: int) -> list[Source]:
    """The ``top`` best distinct cells of a search experiment."""
    from nasnet.results import leaderboard
    from nasnet.store import Store

    if not Store.exists(directory):
        raise TransferError(f"{directory}: no search experiment here (run 'nasnet search')")
    with Store.open(directory, readonly=True) as store:
        best = leaderboard(store.trials(), top)
    if not best:
        raise TransferError(f"{directory}: the search has no finished trial yet")
    experiment = os.path.abspath(directory)
    return [Source(t.genotype, experiment, t.id, t.reward) for t in best]


def sources_from_file(path: str, top: int | None = None) -> list[Source]:
    """A genotype JSON file, or the list written by ``nasnet export`` (best first)."""
    try:
        data = read_json(path, "genotype or export file")
    except FileFormatError as err:
        raise TransferError(str(err)) from None
    if not isinstance(data, list):
        return [Source(load_genotype(path), origin=os.path.abspath(path))]
    sources: dict[str, Source] = {}  # by hash: a cell listed twice is retrained once
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "genotype" not in entry:
            raise TransferError(f"{path}[{k}]: expected an object with a 'genotype'")
        source = Source(
            Genotype.from_dict(entry["genotype"]),
            entry.get("experiment"),
            entry.get("id"),
            entry.get("reward"),
            os.path.abspath(path),
        )
        sources.setdefault(source.hash, source)
    if not sources:
        raise TransferError(f"{path}: lists no cells; export some with 'nasnet export'")
    return list(sources.values())[:top]


def resolve_sources(source: str, top: int) -> list[Source]:
    """A search directory, a genotype / export file or a known genotype name (``nasnet_a``)
    -> the cells to retrain."""
    if os.path.isdir(source):
        return sources_from_search(source, top)
    if os.path.exists(source):
        return sources_from_file(source, top)
    if source in GENOTYPES:
        return [Source(GENOTYPES[source], origin=source)]
    raise TransferError(
        f"{source}: no such search directory or genotype file, and not a known genotype "
        f"name ({', '.join(GENOTYPES)})"
    )


def sources_to_resume(source: str, top: int | None, previous: dict | None) -> list[Source]:
    """The cells a transfer from ``source`` retrains, given the summary of the transfer already
    in its folder (``previous``, from :func:`previous_transfer`; None for a new one).

    A new transfer takes the ``top`` (default :data:`DEFAULT_TOP`) best cells of ``source``. A
    resumed one keeps its saved cells and their lineage, even when the search has found better
    cells since; ``top`` (default: as many as saved) may only grow, adding the best cells of
    ``source`` not yet retrained. A ``source`` other than the saved one must list the saved
    cells first. :class:`~nasnet.options.OptionError` (``top``) when ``top`` would leave saved
    runs out; :class:`TransferError` for other cells.
    """
    if previous is None or not previous["runs"]:
        return resolve_sources(source, top or DEFAULT_TOP)
    saved = [_saved_source(row) for row in previous["runs"]]
    top = top or len(saved)
    if top < len(saved):
        raise OptionError(
            "top", f"the transfer here has {len(saved)} cells; leave it out to resume, or give "
            "a larger one to add cells"
        )  # fmt: skip
    saved_hashes = {s.hash for s in saved}
    if all(_origin(s) == _origin_of(source) for s in saved):
        fresh = resolve_sources(source, top + len(saved)) if top > len(saved) else []
        return saved + [s for s in fresh if s.hash not in saved_hashes][: top - len(saved)]
    fresh = resolve_sources(source, top)
    if [s.hash for s in fresh[: len(saved)]] != [s.hash for s in saved]:
        raise TransferError(
            f"{source}: does not list the cells of the transfer here first; give its own source "
            "to resume it, or choose another output folder"
        )
    return saved + fresh[len(saved) :]


def _saved_source(row: dict) -> Source:
    return Source(Genotype.from_dict(row["genotype"]), row.get("experiment"), row.get("trial_id"),
                  row.get("search_reward"), row.get("genotype_file"))  # fmt: skip


def _origin(source: Source) -> str | None:
    return source.experiment or source.origin


def _origin_of(source: str) -> str:
    """What a :class:`Source` resolved from ``source`` records as its origin."""
    return os.path.abspath(source) if os.path.exists(source) else source


def run_dir_name(rank: int, source: Source) -> str:
    tag = f"trial-{source.trial_id}" if source.trial_id is not None else source.hash
    return f"rank-{rank:02d}-{tag}"


def run_transfer(
    sources: list[Source],
    config: TrainConfig,
    out_dir: str,
    progress: Callable[[int, Source, dict], None] | None = None,
) -> list[dict]:
    """Train every source cell with ``config`` under ``out_dir``; returns one row per run.

    ``progress(rank, source, event)`` receives the trainer's progress events. ``transfer.json``
    and the search's pointer to it are written before the first run starts, with every run
    ``pending``, so that an interrupted transfer is still one (``nasnet show`` lists it).
    A cell whose run would not fit in memory is an :class:`~nasnet.options.OptionError`
    before anything is written. One transfer at a time works in ``out_dir``
    (``transfer.lock``; a second is :class:`~nasnet.lock.ExperimentLocked`).
    """
    _check_out_dir(out_dir)
    shape = check_dataset_spec(config.dataset, config.image_size)
    for source in sources:
        check_training_memory(source.genotype, config, shape)
    with ExperimentLock(out_dir, TRANSFER_LOCK_NAME, TRANSFER_BUSY):
        _check_previous(out_dir, sources, config)
        return _transfer_runs(sources, config, out_dir, progress)


def _check_out_dir(out_dir: str) -> None:
    """A transfer's folder is its own: not a search's, nor a training run's (a transfer's
    runs are training runs)."""
    from nasnet.store import Store

    if Store.exists(out_dir):
        raise TransferError(f"{out_dir}: holds a 'nasnet search'; give the transfer its own folder")
    if os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
        raise TransferError(f"{out_dir}: holds a training run; give the transfer its own folder")


def _transfer_runs(
    sources: list[Source],
    config: TrainConfig,
    out_dir: str,
    progress: Callable[[int, Source, dict], None] | None,
) -> list[dict]:
    runs = [(rank, source, os.path.join(out_dir, run_dir_name(rank, source)))
            for rank, source in enumerate(sources, start=1)]  # fmt: skip
    rows = [_row(rank, source, run_dir, {"status": PENDING}) for rank, source, run_dir in runs]
    created = (previous_transfer(out_dir) or {}).get("created", time.time())
    _write_summary(out_dir, sources, config, rows, created)
    for experiment in {s.experiment for s in sources if s.experiment}:
        _add_pointer(experiment, out_dir)
    for rank, source, run_dir in runs:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_json(os.path.join(run_dir, LINEAGE_FILE), source.lineage())
        run_config = dataclasses.replace(config, genotype=source.genotype.to_dict())
        callback = None if progress is None else (lambda e, r=rank, s=source: progress(r, s, e))
        result = train(
            source.genotype, run_config, out_dir=run_dir, progress=callback, check_memory=False
        )  # checked above
        rows[rank - 1] = _row(rank, source, run_dir, result)
        _write_summary(out_dir, sources, config, rows, created)
    return rows


#: The result fields a row of ``transfer.json`` copies from its run's result.
_RESULT_KEYS = ("status", "reason", "val_accuracy", "test_accuracy", "params", "mult_adds",
                "seconds")  # fmt: skip
#: Every field of a row of ``transfer.json``.
_ROW_KEYS = ("rank", "run", "experiment", "trial_id", "hash", "search_reward", "genotype_file",
             *_RESULT_KEYS, "genotype")  # fmt: skip


def _row(rank: int, source: Source, run_dir: str, result: dict) -> dict:
    keys = _RESULT_KEYS
    return {
        "rank": rank,
        "run": os.path.basename(run_dir),
        **source.lineage(),
        **{key: result.get(key) for key in keys},
        "genotype": source.genotype.to_dict(),
    }


def _check_previous(out_dir: str, sources: list[Source], config: TrainConfig) -> None:
    """A transfer already in ``out_dir`` must be of the same cells, or of the first of them
    (more cells extend it; fewer would drop runs from its summary), with the same options (but
    those a run may change on resume)."""
    previous = previous_transfer(out_dir)
    if previous is None:
        return
    saved_hashes, hashes = previous["hashes"], [s.hash for s in sources]
    if hashes[: len(saved_hashes)] != saved_hashes:
        fewer = len(hashes) < len(saved_hashes) and saved_hashes[: len(hashes)] == hashes
        detail = f"{len(saved_hashes)} cells, not {len(hashes)}" if fewer else "other cells"
        raise TransferError(
            f"{out_dir}: holds a transfer of {detail}; rerun with its source (and as many cells "
            "or more) to resume, or choose another output folder"
        )
    saved, new = previous["config"], config.to_dict()
    changed = changed_fields(saved, new)
    if changed:
        raise OptionError(
            changed[0], changed_option(f"{out_dir} holds a transfer", saved, new, changed)
        )


def _write_summary(
    out_dir: str, sources: list[Source], config: TrainConfig, rows: list, created: float
) -> None:
    summary = {
        "created": created,
        "config": config.to_dict(),
        "hashes": [s.hash for s in sources],
        "runs": rows,
    }
    atomic_write_json(os.path.join(out_dir, TRANSFER_FILE), summary)


def _add_pointer(experiment: str, out_dir: str) -> None:
    """Tell the search directory that ``out_dir`` retrained its cells (once)."""
    path = os.path.join(experiment, POINTER_FILE)
    target = os.path.abspath(out_dir)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            if any(json.loads(line).get("transfer") == target for line in fh if line.strip()):
                return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"transfer": target, "time": time.time()}) + "\n")


def read_transfer(out_dir: str) -> dict:
    """The ``transfer.json`` summary of a transfer directory (``config``: the saved
    :class:`~nasnet.train.TrainConfig` as a dict, ``hashes``: the cells, ``runs``: one row per
    cell); :class:`TransferError` naming the file if it is unreadable or not such a summary."""
    path = os.path.join(out_dir, TRANSFER_FILE)
    try:
        summary = read_json(path, "nasnet transfer summary")
        if not isinstance(summary, dict):
            raise TypeError(f"holds a {type(summary).__name__}")
        config = TrainConfig.from_dict(summary["config"])
        config.check()
        if not isinstance(summary["hashes"], list) or not isinstance(summary["runs"], list):
            raise TypeError("'hashes' and 'runs' must be lists")
        for row in summary["runs"]:
            missing = [key for key in _ROW_KEYS if key not in row]
            if missing:
                raise KeyError(f"a run without {', '.join(missing)}")
            Genotype.from_dict(row["genotype"])
    except FileFormatError as err:
        raise TransferError(f"{err}; {_DAMAGED_FIX}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise TransferError(
            f"{path}: not a nasnet transfer summary ({err}); {_DAMAGED_FIX}"
        ) from None
    summary["config"] = config.to_dict()
    return summary


_DAMAGED_FIX = "move it away to start the transfer in this folder again"


def previous_transfer(out_dir: str) -> dict | None:
    """The summary of the transfer already in ``out_dir`` (:func:`read_transfer`), or None.

    A rerun resumes it: its ``config`` and its number of cells are the defaults of a rerun
    (``nasnet transfer`` takes every option not given from there)."""
    return read_transfer(out_dir) if is_transfer_dir(out_dir) else None


def transfers_of(experiment: str) -> list[dict]:
    """Summaries of the transfers made from a search directory (those still on disk; one
    whose summary is unreadable is left out, ``nasnet show`` on its own folder says why)."""
    path = os.path.join(experiment, POINTER_FILE)
    if not os.path.exists(path):
        return []
    found = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            target = json.loads(line)["transfer"] if line.strip() else None
            if target and is_transfer_dir(target):
                with contextlib.suppress(TransferError):
                    found.append({"transfer": target, **read_transfer(target)})
    return found


def is_transfer_dir(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, TRANSFER_FILE))
