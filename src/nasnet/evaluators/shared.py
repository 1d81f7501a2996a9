"""The shared evaluator: weight-sharing search (ENAS style) in the full NASNet space.

One :class:`~nasnet.supernet.SuperNet` of the child's size (``--child-cells``,
``--child-filters``, ``--child-stem``) holds the weights of every cell of the search space.
For each architecture the strategy proposes, the evaluator

1. trains the shared weights for ``train_steps`` SGD steps on training batches with that
   architecture (as ENAS trains the shared weights on the architectures its controller
   samples; before the first one, ``warmup_steps`` steps on uniformly random architectures);
2. scores it on ``val_batches`` validation batches with the shared weights: the reward is
   that accuracy (cost-aware if asked), and its metrics say ``shared_weights: true``.

With ``normalize_free_ops`` (on for new searches) the supernet batch-normalises, without weights,
the outputs of weightless ops (identity, pools without projection) as DARTS does during
search: it keeps the sampled cells' output scales alike, which the shared classifier needs
(:mod:`nasnet.supernet` says where the sub-network then differs from the standalone one).

The supernet and its optimizer live in the search process (the evaluator is *stateful*: the
search runs it on the in-process executor, chosen when no executor is given) and are saved with
every strategy state; on resume the children told after the last saved state are measured
again, which is deterministic (batches and augmentation are drawn from the trial's seed),
so a killed search resumes exactly (on the CPU, with the same thread count).

Search-time rewards are not comparable across the search (the weights keep training), so when
the search reaches its budget every distinct cell is scored again with the final weights on
the whole validation split (``final_val_batches``): that becomes its reward and
``val_accuracy`` (``final_val_accuracy``; the search-time ones stay as ``search_reward`` and
``search_val_accuracy``), so ``nasnet show`` / ``export`` / ``transfer`` rank by it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasnet.evaluators.base import Evaluator, RewardOptions
from nasnet.evaluators.train import cached_dataset, check_child_dataset
from nasnet.options import check_at_least, check_finite, option
from nasnet.space import Genotype
from nasnet.trials import TrialOutcome

#: Version of :meth:`SharedEvaluator.state_dict`'s layout.
STATE_VERSION = 1

#: Options a new search writes down (experiments created before them keep the field defaults,
#: so they resume as they ran): a longer warm-up and the normalisation of weightless ops,
#: which made the supernet's ranking correlate with standalone training (README).
NEW_SEARCH_OPTIONS: dict[str, Any] = {"warmup_steps": 1000, "normalize_free_ops": True}


@dataclass
class SharedOptions(RewardOptions):
    train_steps: int = option(2, "SGD steps on the shared weights per proposed architecture")
    warmup_steps: int = option(
        50, "SGD steps on random architectures before the first score (new searches: 1000)"
    )
    val_batches: int | None = option(1, "validation batches scored per architecture (none: all)")
    final_val_batches: int | None = option(
        None, "validation batches of the final re-scoring of every cell (none: all)"
    )
    batch_size: int | None = option(None, "batch size (none: the child's --child-batch-size)")
    lr: float | None = option(None, "SGD learning rate, constant (none: the child's)")
    normalize_free_ops: bool = option(
        False, "batch-normalise (no weights) the outputs of weightless ops, as DARTS does (on "
        "for new searches)"
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        check_at_least(self, "train_steps", 0, 10_000_000)
        check_at_least(self, "warmup_steps", 0, 10_000_000)
        for name in ("val_batches", "final_val_batches", "batch_size"):
            if getattr(self, name) is not None:
                check_at_least(self, name, 1, 1_000_000)
        check_finite(self, "lr", 0, low_open=True)


class SharedEvaluator(Evaluator):
    """See the module docstring."""

    name = "shared"
    Options = SharedOptions
    stateful = True

    def __init__(self, options, child, space) -> None:
        super().__init__(options, child, space)
        self.supernet: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.seed = 0
        self.steps = 0
        self.warmed = False

    @classmethod
    def options_for_new_search(cls, options: dict[str, Any]) -> dict[str, Any]:
        """:data:`NEW_SEARCH_OPTIONS` unless given."""
        return {**NEW_SEARCH_OPTIONS, **options}

    # -- setup --------------------------------------------------------------------------------

    def check_setup(self, children_at_once: int = 1) -> None:
        check_child_dataset(self.child.dataset, self.child.image_size)

    def load_shared_data(self) -> Any:
        return cached_dataset(self.child.dataset, self.child.image_size)

    @property
    def opts(self) -> SharedOptions:
        assert isinstance(self.options, SharedOptions)
        return self.options

    @property
    def batch_size(self) -> int:
        return self.opts.batch_size or self.child.batch_size

    def reset_state(self, seed: int) -> None:
        """A fresh supernet (initialised from ``seed``) and optimizer."""
        from nasnet.runtime import preserve_global_state
        from nasnet.supernet import SuperNet
        from nasnet.train import resolve_device

        data = self.load_shared_data()
        self.device = resolve_device(self.child.device)
        with preserve_global_state():
            torch.manual_seed(seed)
            net = SuperNet(self.space, stem=self.child.stem, cells=self.child.cells,
                           filters=self.child.filters, num_classes=data.num_classes,
                           in_chans=data.channels,
                           normalize_free_ops=self.opts.normalize_free_ops)  # fmt: skip
        if self.child.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.supernet = net.to(self.device)
        self._params = list(self.supernet.parameters())
        self.optimizer = torch.optim.SGD(
            self.supernet.parameters(), lr=self.opts.lr or self.child.lr,
            momentum=self.child.momentum, nesterov=self.child.nesterov and self.child.momentum > 0,
            weight_decay=self.child.weight_decay,
        )  # fmt: skip
        self.seed, self.steps, self.warmed = seed, 0, False

    def _ready(self) -> None:
        if self.supernet is None:
            self.reset_state(self.seed)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights and momentum as two flat tensors (fast to save: one blob, not thousands)."""
        self._ready()
        assert self.optimizer is not None
        params = list(self.supernet.parameters())
        momentum, mask = [], []
        for p in params:
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            mask.append(buf is not None)
            if buf is not None:
                momentum.append(buf.detach().reshape(-1).cpu())
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "steps": self.steps,
            "warmed": self.warmed,
            "params": torch.cat([p.detach().reshape(-1).cpu() for p in params]),
            "momentum": torch.cat(momentum) if momentum else torch.zeros(0),
            "has_momentum": torch.tensor(mask, dtype=torch.bool),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"shared evaluator state version {state.get('version')!r}")
        if self.supernet is None:
            self.reset_state(int(state["seed"]))
        assert self.optimizer is not None
        self.optimizer.state.clear()  # every weight and momentum buffer is overwritten below
        self.seed = int(state["seed"])
        params = list(self.supernet.parameters())
        flat, momentum = state["params"], state["momentum"]
        mask = state["has_momentum"].tolist()
        if len(mask) != len(params) or flat.numel() != sum(p.numel() for p in params):
            raise ValueError("the saved supernet has another size than this search's")
        offset = moffset = 0
        with torch.no_grad():
            for p, has in zip(params, mask, strict=True):
                n = p.numel()
                p.copy_(flat[offset : offset + n].view(p.shape))
                offset += n
                if has:
                    buf = torch.empty_like(p)
                    buf.copy_(momentum[moffset : moffset + n].view(p.shape))
                    self.optimizer.state[p] = {"momentum_buffer": buf}
                    moffset += n
        self.steps, self.warmed = int(state["steps"]), bool(state["warmed"])

    # -- training and scoring -----------------------------------------------------------------

    def _train_step(self, genotype: Genotype, idx: torch.Tensor, gen: torch.Generator) -> float:
        from nasnet.data import Augment

        assert self.optimizer is not None
        data = self.load_shared_data()
        augment = Augment.for_dataset(data, self.child.cutout, self.child.channels_last)
        x = augment(data.train_x[idx], gen).to(self.device)
        y = data.train_y[idx].to(self.device)
        loss = F.cross_entropy(self.supernet(x, genotype), y,
                               label_smoothing=self.child.label_smoothing)  # fmt: skip
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.child.grad_clip > 0:
            params = [p for p in self._params if p.grad is not None]
            nn.utils.clip_grad_norm_(params, self.child.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return float(loss.detach())

    def _batches(self, n: int, steps: int, seed: int) -> tuple[list[torch.Tensor], torch.Generator]:
        gen = torch.Generator().manual_seed(seed)
        batch = min(self.batch_size, n)
        rounds = max(1, -(-steps * batch // n))
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)])
        return [order[i * batch : (i + 1) * batch] for i in range(steps)], gen

    def _warmup(self) -> None:
        steps = self.opts.warmup_steps
        rng = random.Random(f"nasnet-shared-warmup:{self.seed}")
        n = len(self.load_shared_data().train_y)
        batches, gen = self._batches(n, steps, self.seed)
        for idx in batches:
            self._train_step(self.space.sample(rng), idx, gen)
        self.warmed = True

    @torch.no_grad()
    def score(
        self, genotype: Genotype, batches: int | None, seed: int | None
    ) -> tuple[float, float, int]:
        """``(accuracy, mean loss, images)`` on ``batches`` validation batches (drawn from
        ``seed``; None: the whole split in order), BN on batch statistics."""
        from nasnet.data import Augment

        data = self.load_shared_data()
        augment = Augment.for_dataset(data, 0, self.child.channels_last)
        n = len(data.val_y)
        if batches is None or seed is None:
            size = self.child.eval_batch_size
            chunks = list(torch.arange(n).split(size))
        else:
            chunks, _ = self._batches(n, batches, seed)
        # no train() / eval() switch: it walks every module, and nothing depends on it (BN
        # always uses batch statistics, there is no dropout)
        correct, loss, seen = 0, 0.0, 0
        for idx in chunks:
            x = augment.normalize(data.val_x[idx]).to(self.device)
            y = data.val_y[idx].to(self.device)
            logits = self.supernet(x, genotype)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        return correct / max(seen, 1), loss / max(seen, 1), seen

    def _cost(self, genotype: Genotype) -> dict[str, Any]:
        from nasnet.counting import count_mult_adds

        data = self.load_shared_data()
        model = self.supernet.to_standalone(genotype, device="meta")
        size = (data.channels, data.image_size, data.image_size)
        params = sum(p.numel() for p in model.parameters())
        try:
            mult_adds = count_mult_adds(model, size)
        except Exception:  # counting on the meta device is best effort
            mult_adds = None
        return {"params": params, "mult_adds": mult_adds}

    def measure(
        self, genotype: Genotype, seed: int, context: dict[str, Any]
    ) -> TrialOutcome | dict[str, Any]:
        self._ready()
        self.supernet.check(genotype)
        tic = time.perf_counter()
        if not self.warmed:
            self._warmup()
        n = len(self.load_shared_data().train_y)
        batches, gen = self._batches(n, self.opts.train_steps, seed)
        losses = [self._train_step(genotype, idx, gen) for idx in batches]
        accuracy, val_loss, images = self.score(genotype, self.opts.val_batches, seed + 1)
        return {
            "val_accuracy": accuracy,
            "val_loss": val_loss,
            "val_images": images,
            "train_loss": sum(losses) / len(losses) if losses else None,
            "shared_weights": True,
            "supernet_steps": self.steps,
            # params / mult-adds cost ~0.5 s per cell: measured here only for the cost-aware
            # reward, else once per distinct cell at the final re-scoring
            **(self._cost(genotype) if self.opts.cost_weight else {}),
            "seconds": time.perf_counter() - tic,
        }

    def final_metrics(self, genotype: Genotype) -> dict[str, Any] | None:
        self._ready()
        accuracy, loss, images = self.score(genotype, self.opts.final_val_batches, 0)
        return {"val_accuracy": accuracy, "val_loss": loss, "final_val_accuracy": accuracy,
                "final_val_images": images, "final_supernet_steps": self.steps,
                **self._cost(genotype)}  # fmt: skip

    def ranking_warning(self, finals: list[dict[str, Any]]) -> str | None:
        """A warning when the median cell scores below twice chance: the supernet is too
        little trained for its ranking to be more than a rough guide (see the README's
        measurements)."""
        scores = sorted(float(f["val_accuracy"]) for f in finals if f)
        if not scores:
            return None
        chance = 1.0 / self.load_shared_data().num_classes
        median = scores[len(scores) // 2]
        if median >= 2 * chance:
            return None
        return (f"the supernet scores the median cell {median:.3f} (chance {chance:.3f}): it is "
                "little trained and its ranking only a rough guide; retrain the top cells "
                "standalone (nasnet transfer) or search with --evaluator train")  # fmt: skip


__all__ = ["SharedEvaluator", "SharedOptions"]
