"""The train evaluator: trains each child for real with :func:`nasnet.train.train` on the
search's child :class:`~nasnet.train.TrainConfig`; the reward is its validation accuracy
(cost-aware if asked). Search children never evaluate the test split: the test split is kept
for runs trained by ``nasnet train`` and ``nasnet transfer``. The dataset is loaded once per
process and cached.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nasnet.evaluators.base import Evaluator
from nasnet.options import OptionError
from nasnet.space import Genotype
from nasnet.train import train
from nasnet.trials import TrialOutcome

#: The metrics of a child run that a search keeps (never the test accuracy).
KEPT_METRICS = ("val_accuracy", "train_accuracy", "val_loss", "params", "mult_adds", "seconds",
                "epochs_done", "val_curve")  # fmt: skip

_DATASETS: dict[tuple[str, int | None], Any] = {}


def cached_dataset(spec: str, image_size: int | None = None) -> Any:
    """Load a dataset once per process."""
    key = (spec, image_size)
    if key not in _DATASETS:
        from nasnet.data import load_dataset

        _DATASETS[key] = load_dataset(spec, image_size)
    return _DATASETS[key]


class TrainEvaluator(Evaluator):
    """See the module docstring."""

    name = "train"

    def measure(self, genotype: Genotype, seed: int) -> TrialOutcome | dict[str, Any]:
        config = dataclasses.replace(self.child, seed=seed, eval_test=False)
        result = train(genotype, config, dataset=self.load_shared_data())
        metrics = {key: result.get(key) for key in KEPT_METRICS}
        if result.get("status") != "done":
            reason = result.get("reason") or "unknown reason"
            return TrialOutcome.failed(f"training failed: {reason}", metrics)
        return metrics

    def check_setup(self) -> None:
        """The dataset spec names something readable (without loading every image)."""
        from nasnet.data import DatasetError, check_dataset_spec

        try:
            check_dataset_spec(self.child.dataset)
        except DatasetError as err:
            raise OptionError("child.dataset", str(err)) from None

    def shared_data_key(self) -> tuple:
        return (self.child.dataset, self.child.image_size)

    def load_shared_data(self) -> Any:
        return cached_dataset(self.child.dataset, self.child.image_size)

    def use_shared_data(self, data: Any) -> None:
        _DATASETS[self.shared_data_key()] = data


__all__ = ["KEPT_METRICS", "TrainEvaluator", "cached_dataset"]
