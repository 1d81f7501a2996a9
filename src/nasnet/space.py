"""The NASNet search space: operations, blocks, cells, genotypes and the controller's action codec.

Hidden-state indices follow TF-slim: ``0`` is h_i (the previous cell's output), ``1`` is
h_{i-1} (the cell before it), and ``2 + k`` is the output of block ``k`` of the same cell.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

FORMAT_VERSION = 1

#: The paper's 13 operations, in the paper's order, under stable names.
OPS: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)

#: The two ways a block merges its two op outputs.
COMBINES: tuple[str, ...] = ("add", "concat")

#: Number of cell inputs (h_i and h_{i-1}).
NUM_CELL_INPUTS = 2

#: Decisions per block: input 1, input 2, op 1, op 2, combine.
DECISIONS_PER_BLOCK = 5


class GenotypeError(ValueError):
    """A genotype (or its JSON) is not valid in the search space."""


@dataclass(frozen=True)
class Block:
    """One block: ``combine(op_1(state[input_1]), op_2(state[input_2]))``."""

    input_1: int
    input_2: int
    op_1: str
    op_2: str
    combine: str = "add"

    def to_dict(self) -> dict:
        return {
            "inputs": [self.input_1, self.input_2],
            "ops": [self.op_1, self.op_2],
            "combine": self.combine,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "block") -> Block:
        if not isinstance(data, dict):
            raise GenotypeError(f"{where}: expected an object with 'inputs', 'ops', 'combine'")
        inputs = _pair(data.get("inputs"), f"{where}.inputs", int)
        ops = _pair(data.get("ops"), f"{where}.ops", str)
        combine = data.get("combine", "add")
        if not isinstance(combine, str):
            raise GenotypeError(f"{where}.combine: expected a string such as 'add'")
        return cls(inputs[0], inputs[1], ops[0], ops[1], combine)


def _pair(value: object, where: str, kind: type) -> list:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    ):
        raise GenotypeError(f"{where}: expected a list of two {kind.__name__}s")
    return value


@dataclass(frozen=True)
class Cell:
    """A cell: B blocks and, optionally, the explicit list of concatenated states.

    With ``concat=None`` the output is every hidden state no block consumes (the paper's rule).
    """

    blocks: tuple[Block, ...]
    concat: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.concat is not None:
            object.__setattr__(self, "concat", tuple(self.concat))

    @property
    def num_states(self) -> int:
        return NUM_CELL_INPUTS + len(self.blocks)

    def consumed_states(self) -> set[int]:
        return {i for b in self.blocks for i in (b.input_1, b.input_2)}

    def output_states(self) -> tuple[int, ...]:
        """Indices of the hidden states concatenated into the cell output, in order."""
        if self.concat is not None:
            return self.concat
        used = self.consumed_states()
        return tuple(i for i in range(self.num_states) if i not in used)

    def to_dict(self) -> dict:
        data: dict = {"blocks": [b.to_dict() for b in self.blocks]}
        if self.concat is not None:
            data["concat"] = list(self.concat)
        return data

    @classmethod
    def from_dict(cls, data: object, where: str = "cell") -> Cell:
        if not isinstance(data, dict):
            raise GenotypeError(f"{where}: expected an object with 'blocks'")
        blocks = data.get("blocks")
        if not isinstance(blocks, list):
            raise GenotypeError(f"{where}.blocks: expected a list of blocks")
        concat = data.get("concat")
        if concat is not None and (
            not isinstance(concat, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in concat)
        ):
            raise GenotypeError(f"{where}.concat: expected a list of state indices or null")
        return cls(
            tuple(Block.from_dict(b, f"{where}.blocks[{k}]") for k, b in enumerate(blocks)),
            None if concat is None else tuple(concat),
        )


@dataclass(frozen=True)
class Genotype:
    """A pair of cells: the Normal cell and the Reduction cell."""

    normal: Cell
    reduction: Cell

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "normal": self.normal.to_dict(),
            "reduction": self.reduction.to_dict(),
        }

    def to_json(self) -> str:
        """Stable, human-readable JSON (two-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError("genotype: expected a JSON object with 'normal' and 'reduction'")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise GenotypeError(
                f"format_version: {version!r} is not supported; this nasnet reads {FORMAT_VERSION}"
            )
        for key in ("normal", "reduction"):
            if key not in data:
                raise GenotypeError(f"{key}: missing; a genotype needs 'normal' and 'reduction'")
        genotype = cls(
            Cell.from_dict(data["normal"], "normal"), Cell.from_dict(data["reduction"], "reduction")
        )
        validate_genotype(genotype)
        return genotype

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"not valid JSON (line {err.lineno}): {err.msg}") from None
        return cls.from_dict(data)

    def canonical_hash(self) -> str:
        """A hex digest equal for equivalent genotypes (see :func:`canonical_cell`)."""
        key = json.dumps([canonical_cell(self.normal), canonical_cell(self.reduction)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def validate_cell(cell: Cell, where: str, ops: Sequence[str] = OPS, num_blocks: int | None = None):
    """Raise :class:`GenotypeError` naming the first invalid field of ``cell``."""
    if num_blocks is not None and len(cell.blocks) != num_blocks:
        raise GenotypeError(f"{where}.blocks: has {len(cell.blocks)} blocks, expected {num_blocks}")
    if not cell.blocks:
        raise GenotypeError(f"{where}.blocks: a cell needs at least one block")
    for k, block in enumerate(cell.blocks):
        at = f"{where}.blocks[{k}]"
        for name in ("input_1", "input_2"):
            index = getattr(block, name)
            if not 0 <= index < NUM_CELL_INPUTS + k:
                raise GenotypeError(
                    f"{at}.{name}: state {index} is out of range; block {k} may read states "
                    f"0..{NUM_CELL_INPUTS + k - 1} (h_i, h_i-1, earlier blocks)"
                )
        for name in ("op_1", "op_2"):
            op = getattr(block, name)
            if op not in ops:
                raise GenotypeError(f"{at}.{name}: unknown op {op!r}; choose from {', '.join(ops)}")
        if block.combine not in COMBINES:
            choices = ", ".join(COMBINES)
            raise GenotypeError(
                f"{at}.combine: unknown combine {block.combine!r}; choose from {choices}"
            )
    if cell.concat is not None:
        _validate_concat(cell, where)


def _validate_concat(cell: Cell, where: str) -> None:
    if not cell.concat:
        raise GenotypeError(f"{where}.concat: must list at least one state, or be null")
    if len(set(cell.concat)) != len(cell.concat):
        raise GenotypeError(f"{where}.concat: lists a state twice")
    for index in cell.concat:
        if not 0 <= index < cell.num_states:
            raise GenotypeError(
                f"{where}.concat: state {index} is out of range 0..{cell.num_states - 1}"
            )
    used = cell.consumed_states() | set(cell.concat)
    for k in range(len(cell.blocks)):
        if NUM_CELL_INPUTS + k not in used:
            raise GenotypeError(
                f"{where}.concat: block {k} (state {NUM_CELL_INPUTS + k}) is neither consumed "
                "nor concatenated; add it to concat"
            )


def validate_genotype(
    genotype: Genotype, ops: Sequence[str] = OPS, num_blocks: int | None = None
) -> Genotype:
    """Check both cells; returns the genotype so calls can be chained."""
    validate_cell(genotype.normal, "normal", ops, num_blocks)
    validate_cell(genotype.reduction, "reduction", ops, num_blocks)
    return genotype


def canonical_cell(cell: Cell) -> list:
    """A canonical form of ``cell``, equal for equivalent cells.

    Two cells are equivalent when one becomes the other by swapping the two operands of blocks
    and by renumbering blocks in any order their dependencies allow (block order only matters
    through data flow). Concatenation is treated as commutative because a channel permutation
    of a cell output is absorbed by the 1x1 convolution that every consumer applies first.
    The form is the smallest serialisation over all dependency-respecting renumberings.
    """
    n = len(cell.blocks)
    outputs = set(cell.output_states())
    best: list | None = None
    for order in _topological_orders(cell):
        new_index = {i: i for i in range(NUM_CELL_INPUTS)}
        new_index.update(
            {NUM_CELL_INPUTS + old: NUM_CELL_INPUTS + new for new, old in enumerate(order)}
        )
        blocks = []
        for old in order:
            b = cell.blocks[old]
            operands = sorted([[new_index[b.input_1], b.op_1], [new_index[b.input_2], b.op_2]])
            blocks.append([operands, b.combine])
        form = [blocks, sorted(new_index[i] for i in outputs)]
        if best is None or form < best:
            best = form
    assert best is not None and len(best[0]) == n
    return best


def _topological_orders(cell: Cell):
    """Every order of the blocks in which each block comes after the blocks it reads."""
    deps = [
        {i - NUM_CELL_INPUTS for i in (b.input_1, b.input_2) if i >= NUM_CELL_INPUTS}
        for b in cell.blocks
    ]

    def extend(order: list[int], placed: set[int]):
        if len(order) == len(deps):
            yield tuple(order)
            return
        for k in range(len(deps)):
            if k not in placed and deps[k] <= placed:
                order.append(k)
                placed.add(k)
                yield from extend(order, placed)
                placed.remove(k)
                order.pop()

    yield from extend([], set())


@dataclass(frozen=True)
class SearchSpace:
    """The space a controller searches: B blocks per cell and an op vocabulary.

    The flat action sequence has ``2 * 5B`` integers: the Normal cell's blocks, then the
    Reduction cell's; per block ``input_1, input_2, op_1, op_2, combine``, each an index
    into its legal range (:meth:`action_sizes`).
    """

    num_blocks: int = 5
    ops: tuple[str, ...] = OPS
    combines: tuple[str, ...] = COMBINES
    _sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "combines", tuple(self.combines))
        if self.num_blocks < 1:
            raise GenotypeError(f"num_blocks: must be at least 1, got {self.num_blocks}")
        if not self.ops:
            raise GenotypeError("ops: the vocabulary needs at least one op")
        for op in self.ops:
            if op not in OPS:
                raise GenotypeError(f"ops: unknown op {op!r}; choose from {', '.join(OPS)}")
        if len(set(self.ops)) != len(self.ops):
            raise GenotypeError("ops: an op is listed twice")
        for c in self.combines:
            if c not in COMBINES:
                raise GenotypeError(f"combines: unknown combine {c!r}; choose from add, concat")
        sizes = []
        for _cell in range(2):
            for k in range(self.num_blocks):
                states = NUM_CELL_INPUTS + k
                sizes += [states, states, len(self.ops), len(self.ops), len(self.combines)]
        object.__setattr__(self, "_sizes", tuple(sizes))

    @property
    def num_actions(self) -> int:
        return len(self._sizes)

    def action_sizes(self) -> tuple[int, ...]:
        """The number of legal choices at each position of the action sequence."""
        return self._sizes

    def action_kinds(self) -> tuple[str, ...]:
        """The kind of each position: ``input``, ``op`` or ``combine``."""
        per_block = ("input", "input", "op", "op", "combine")
        return per_block * (2 * self.num_blocks)

    def validate(self, genotype: Genotype) -> Genotype:
        """Check ``genotype`` against this space's B, op vocabulary and combines."""
        validate_genotype(genotype, self.ops, self.num_blocks)
        for where, cell in (("normal", genotype.normal), ("reduction", genotype.reduction)):
            for k, b in enumerate(cell.blocks):
                if b.combine not in self.combines:
                    raise GenotypeError(
                        f"{where}.blocks[{k}].combine: {b.combine!r} is not in this search space"
                    )
        return genotype

    def encode(self, genotype: Genotype) -> list[int]:
        """Genotype -> flat action sequence. Explicit concat lists are not encoded."""
        self.validate(genotype)
        actions: list[int] = []
        for cell in (genotype.normal, genotype.reduction):
            for b in cell.blocks:
                actions += [
                    b.input_1,
                    b.input_2,
                    self.ops.index(b.op_1),
                    self.ops.index(b.op_2),
                    self.combines.index(b.combine),
                ]
        return actions

    def decode(self, actions: Sequence[int]) -> Genotype:
        """Flat action sequence -> genotype (with the paper's unused-state concat rule)."""
        actions = [int(a) for a in actions]
        if len(actions) != self.num_actions:
            raise GenotypeError(
                f"actions: expected {self.num_actions} integers (2 x 5B), got {len(actions)}"
            )
        for position, (a, size) in enumerate(zip(actions, self._sizes, strict=True)):
            if not 0 <= a < size:
                raise GenotypeError(f"actions[{position}]: {a} is outside 0..{size - 1}")
        per_cell = DECISIONS_PER_BLOCK * self.num_blocks
        cells = []
        for c in range(2):
            chunk = actions[c * per_cell : (c + 1) * per_cell]
            blocks = []
            for k in range(self.num_blocks):
                i1, i2, o1, o2, cb = chunk[k * 5 : k * 5 + 5]
                blocks.append(Block(i1, i2, self.ops[o1], self.ops[o2], self.combines[cb]))
            cells.append(Cell(tuple(blocks)))
        return Genotype(cells[0], cells[1])

    def sample(self, rng: random.Random) -> Genotype:
        """A genotype with every decision drawn uniformly (the paper's random search)."""
        return self.decode([rng.randrange(size) for size in self._sizes])

    def sample_actions(self, rng: random.Random) -> list[int]:
        return [rng.randrange(size) for size in self._sizes]

    def to_dict(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "ops": list(self.ops),
            "combines": list(self.combines),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        return cls(data["num_blocks"], tuple(data["ops"]), tuple(data["combines"]))


def load_genotype(path: str) -> Genotype:
    """Read a genotype JSON file; errors name the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise GenotypeError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GenotypeError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from None
    if isinstance(data, dict) and "genotype" in data and "normal" not in data:
        data = data["genotype"]  # a run's config.json or an exported entry
    try:
        return Genotype.from_dict(data)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


__all__ = [
    "COMBINES",
    "FORMAT_VERSION",
    "OPS",
    "Block",
    "Cell",
    "Genotype",
    "GenotypeError",
    "SearchSpace",
    "canonical_cell",
    "load_genotype",
    "validate_genotype",
]
