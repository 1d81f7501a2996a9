"""The NASNet controller: a one-layer LSTM that emits a genotype one decision at a time.

As in the paper (App. A.1-A.3): an ``nn.LSTMCell`` with 100 hidden units and every weight drawn
from U(-0.1, 0.1). The controller makes the ``2 x 5B`` decisions of a :class:`SearchSpace` in
order (the Normal cell's blocks first, then the Reduction cell's; per block ``input_1, input_2,
op_1, op_2, combine``). Each position has its own softmax head over that position's legal
choices (``space.action_sizes()``: block ``k`` may read ``2 + k`` states), and the decision made
at position ``t`` is fed to the LSTM at step ``t + 1`` through an embedding owned by position
``t`` (one embedding table per position, so "input 3 of block 4" and "op 3 of block 1" never
share a vector). Step 0 reads a learned "go" vector.

The probability of an architecture is the product of its decisions' probabilities;
:meth:`Controller.sample` draws one and :meth:`Controller.score` re-scores a batch of given
action sequences (log-probabilities and entropies, differentiable, for PPO / REINFORCE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasnet.space import Genotype, SearchSpace

#: The paper's controller size and initialisation range.
HIDDEN_SIZE = 100
INIT_RANGE = 0.1


class Controller(nn.Module):
    """LSTM policy over a :class:`SearchSpace`'s flat action sequence.

    The per-position heads and embeddings are stored packed: position ``t`` owns rows
    ``offsets[t] : offsets[t] + sizes[t]`` of ``head`` (its own softmax layer) and of
    ``embedding`` (its own embedding table), which lets :meth:`score` handle all positions
    with a few large operations. ``temperature`` divides the logits and ``tanh_constant``
    ``C`` replaces them with ``C * tanh(logits)`` (logit clipping as in ENAS); both are off by
    default (the paper's controller uses neither).
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
        self.offsets = tuple(sum(self.sizes[:t]) for t in range(len(self.sizes) + 1))
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.lstm = nn.LSTMCell(hidden_size, hidden_size)
        self.go = nn.Parameter(torch.empty(1, hidden_size))
        self.head = nn.Linear(hidden_size, self.offsets[-1])
        # The last decision feeds no later step, so it needs no embedding.
        self.embedding = nn.Embedding(self.offsets[-2], hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -init_range, init_range, generator=generator)
        widest = max(self.sizes)
        index = torch.zeros(len(self.sizes), widest, dtype=torch.long)
        pad = torch.ones(len(self.sizes), widest, dtype=torch.bool)
        for t, size in enumerate(self.sizes):
            index[t] = self.offsets[t] + torch.arange(widest).clamp(max=size - 1)
            pad[t, :size] = False
        self.register_buffer("_index", index, persistent=False)
        self.register_buffer("_pad", pad, persistent=False)
        self.register_buffer("_offsets", torch.tensor(self.offsets[:-2]), persistent=False)

    def _shape(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _position_logits(self, hidden: torch.Tensor, t: int) -> torch.Tensor:
        rows = slice(self.offsets[t], self.offsets[t + 1])
        return self._shape(F.linear(hidden, self.head.weight[rows], self.head.bias[rows]))

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> tuple[Genotype, list[int], float]:
        """Draw one architecture: ``(genotype, actions, log_probability)``."""
        h = torch.zeros(1, self.hidden_size)
        c = torch.zeros(1, self.hidden_size)
        x = self.go
        actions: list[int] = []
        log_prob = torch.zeros(())
        for t in range(len(self.sizes)):
            h, c = self.lstm(x, (h, c))
            log_p = torch.log_softmax(self._position_logits(h, t), dim=-1)
            a = torch.multinomial(log_p.exp(), 1, generator=generator)
            log_prob = log_prob + log_p[0, a[0, 0]]
            actions.append(int(a))
            if t < len(self.sizes) - 1:
                x = self.embedding(a[:, 0] + self.offsets[t])
        return self.space.decode(actions), actions, float(log_prob)

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
        if bool(((actions < 0) | (actions >= torch.tensor(self.sizes))).any()):
            raise ValueError("actions_batch: an action is outside its position's legal range")
        batch = actions.shape[0]
        inputs = torch.cat(
            [
                self.go.expand(batch, 1, self.hidden_size),
                self.embedding(actions[:, :-1] + self._offsets),
            ],
            dim=1,
        )
        hidden = self._sequence(inputs)  # [batch, positions, hidden]
        packed = self._shape(self.head(hidden))  # [batch, positions, all choices]
        index = self._index.expand(batch, -1, -1)
        logits = packed.gather(2, index).masked_fill(self._pad, float("-inf"))
        log_p = torch.log_softmax(logits, dim=-1)
        log_prob = log_p.gather(2, actions.unsqueeze(2)).squeeze(2).sum(dim=1)
        entropy = -(log_p.exp() * log_p.masked_fill(self._pad, 0.0)).sum(dim=(1, 2))
        return log_prob, entropy

    def _sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        """The LSTM cell run over ``inputs`` ``[batch, steps, hidden]`` from a zero state, in
        one fused call (``torch.lstm`` with the cell's weights, as ``nn.LSTM`` does)."""
        zeros = inputs.new_zeros(1, inputs.shape[0], self.hidden_size)
        weights = [self.lstm.weight_ih, self.lstm.weight_hh, self.lstm.bias_ih, self.lstm.bias_hh]
        output, _, _ = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, False, False, True)
        return output


__all__ = ["HIDDEN_SIZE", "INIT_RANGE", "Controller"]
