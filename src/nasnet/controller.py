"""The NASNet controller: a one-layer LSTM that emits a genotype one decision at a time.

As in the paper (App. A.1-A.3): an ``nn.LSTMCell`` with 100 hidden units and every weight drawn
from U(-0.1, 0.1). The controller makes the ``2 x 5B`` decisions of a :class:`SearchSpace` in
order (the Normal cell's blocks first, then the Reduction cell's; per block ``input_1, input_2,
op_1, op_2, combine``). Each position has its own softmax head over that position's legal
choices (``space.action_sizes()``: block ``k`` may read ``2 + k`` states), and the decision made
at position ``t`` is fed to the LSTM at step ``t + 1`` through an embedding owned by position
``t`` (one embedding table per position, so "input 3 of block 4" and "op 3" never share a
vector). Step 0 reads a learned "go" vector.

The probability of an architecture is the product of its decisions' probabilities;
:meth:`Controller.sample` draws one and :meth:`Controller.score` re-scores a batch of given
action sequences (log-probabilities and entropies, differentiable, for PPO / REINFORCE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasnet.space import Genotype, SearchSpace

#: The paper's controller size and initialisation range.
HIDDEN_SIZE = 100
INIT_RANGE = 0.1


class Controller(nn.Module):
    """LSTM policy over a :class:`SearchSpace`'s flat action sequence.

    ``temperature`` divides the logits and ``tanh_constant`` ``C`` replaces them with
    ``C * tanh(logits)`` (logit clipping as in ENAS); both are off by default (the paper's
    controller uses neither).
    """

    def __init__(
        self,
        space: SearchSpace,
        hidden_size: int = HIDDEN_SIZE,
        temperature: float | None = None,
        tanh_constant: float | None = None,
        init_range: float = INIT_RANGE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.sizes = tuple(space.action_sizes())
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.lstm = nn.LSTMCell(hidden_size, hidden_size)
        self.go = nn.Parameter(torch.empty(1, hidden_size))
        self.heads = nn.ModuleList(nn.Linear(hidden_size, n) for n in self.sizes)
        # The last decision feeds no later step, so it needs no embedding.
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden_size) for n in self.sizes[:-1])
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -init_range, init_range, generator=generator)

    def _logits(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        logits = self.heads[position](hidden)
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _rollout(
        self,
        batch: int,
        actions: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the LSTM over all positions; sample where ``actions`` is None."""
        h = torch.zeros(batch, self.hidden_size)
        c = torch.zeros(batch, self.hidden_size)
        x = self.go.expand(batch, -1)
        log_prob = torch.zeros(batch)
        entropy = torch.zeros(batch)
        chosen = []
        for t in range(len(self.sizes)):
            h, c = self.lstm(x, (h, c))
            log_p = torch.log_softmax(self._logits(h, t), dim=-1)
            if actions is None:
                a = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, t]
            chosen.append(a)
            log_prob = log_prob + log_p.gather(1, a.unsqueeze(1)).squeeze(1)
            entropy = entropy - (log_p.exp() * log_p).sum(dim=-1)
            if t < len(self.embeddings):
                x = self.embeddings[t](a)
        return torch.stack(chosen, dim=1), log_prob, entropy

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> tuple[Genotype, list[int], float]:
        """Draw one architecture: ``(genotype, actions, log_probability)``."""
        actions, log_prob, _ = self._rollout(1, None, generator)
        action_list = [int(a) for a in actions[0]]
        return self.space.decode(action_list), action_list, float(log_prob[0])

    def score(
        self, actions_batch: torch.Tensor | Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and entropies (each shape ``[batch]``) of given action sequences."""
        actions = torch.as_tensor(actions_batch, dtype=torch.long)
        if actions.dim() != 2 or actions.shape[1] != len(self.sizes):
            raise ValueError(
                f"actions_batch: expected shape [batch, {len(self.sizes)}], "
                f"got {list(actions.shape)}"
            )
        sizes = torch.tensor(self.sizes)
        if bool(((actions < 0) | (actions >= sizes)).any()):
            raise ValueError("actions_batch: an action is outside its position's legal range")
        _, log_prob, entropy = self._rollout(actions.shape[0], actions, None)
        return log_prob, entropy


__all__ = ["HIDDEN_SIZE", "INIT_RANGE", "Controller"]
