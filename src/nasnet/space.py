"""The NASNet search space: operations, blocks, cells, genotypes and the controller's action codec.

Hidden-state indices follow TF-slim: ``0`` is h_i (the previous cell's output), ``1`` is
h_{i-1} (the cell before it), and ``2 + k`` is the output of block ``k`` of the same cell.
"""

from __future__ import annotations

import hashlib
import heapq
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

#: Upper bound on blocks per cell (B), checked by ``SearchSpace`` and genotype validation.
#: The paper uses B = 5; 64 leaves an order of magnitude of headroom for experiments while
#: keeping everything a cell size drives bounded: the controller emits 2 x 5B = 640 decisions
#: (one LSTM step each), and the network builder keeps B + 2 hidden states plus each block's
#: op activations alive for the backward pass in every cell, so memory grows linearly in B
#: (about 13x that of a B = 5 cell at 64) and a cell's output may concatenate up to B states.
#: The canonical hash is milliseconds up to this size. A larger B in a file is a typo or
#: hostile input rather than an architecture.
MAX_BLOCKS = 64


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
        _known_keys(data, ("inputs", "ops", "combine"), where)
        inputs = _pair(data.get("inputs"), f"{where}.inputs", int)
        ops = _pair(data.get("ops"), f"{where}.ops", str)
        combine = data.get("combine", "add")
        if not isinstance(combine, str):
            raise GenotypeError(f"{where}.combine: expected a string such as 'add'")
        return cls(inputs[0], inputs[1], ops[0], ops[1], combine)


def _known_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    """A key ``data`` may not hold (a typo such as ``concta`` would silently mean the
    default) is a :class:`GenotypeError` naming it."""
    unknown = [key for key in data if key not in known]
    if unknown:
        raise GenotypeError(f"{where}.{unknown[0]}: unknown key; the keys are {', '.join(known)}")


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
        _known_keys(data, ("blocks", "concat"), where)
        blocks = data.get("blocks")
        if not isinstance(blocks, list):
            raise GenotypeError(f"{where}.blocks: expected a list of blocks")
        if len(blocks) > MAX_BLOCKS:  # before parsing them all
            raise GenotypeError(f"{where}.blocks: {_too_many_blocks(len(blocks))}")
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
        if isinstance(data, list) and data and isinstance(data[0], dict) and "genotype" in data[0]:
            raise GenotypeError(
                "genotype: this is a list of cells written by 'nasnet export'; give one cell "
                "(nasnet export --split DIR writes one file per cell)"
            )
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
        _known_keys(data, ("format_version", "normal", "reduction"), "genotype")
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
        """A hex digest equal exactly for equivalent genotypes: canonical form v2.

        Equivalences (see :func:`canonical_cell`): swapping a block's two operands, renumbering
        blocks in an order their dependencies allow, and the order of concatenated states.
        v2 (signature refinement plus a pruned search, milliseconds up to :data:`MAX_BLOCKS`)
        replaces v1 (a minimum over every block order, factorial in B); the equivalence classes
        are the same but the digests differ from v1's.
        """
        normal = canonical_cell(self.normal, "normal")
        reduction = canonical_cell(self.reduction, "reduction")
        key = json.dumps(["v2", normal, reduction])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def validate_cell(cell: Cell, where: str, ops: Sequence[str] = OPS, num_blocks: int | None = None):
    """Raise :class:`GenotypeError` naming the first invalid field of ``cell``."""
    if len(cell.blocks) > MAX_BLOCKS:
        raise GenotypeError(f"{where}.blocks: {_too_many_blocks(len(cell.blocks))}")
    if num_blocks is not None and len(cell.blocks) != num_blocks:
        raise GenotypeError(f"{where}.blocks: has {len(cell.blocks)} blocks, expected {num_blocks}")
    if not cell.blocks:
        raise GenotypeError(f"{where}.blocks: a cell needs at least one block")
    for k, block in enumerate(cell.blocks):
        at = f"{where}.blocks[{k}]"
        for name in ("input_1", "input_2"):
            index = getattr(block, name)
            if not isinstance(index, int) or isinstance(index, bool):
                raise GenotypeError(f"{at}.{name}: {index!r} is not a state index (an int)")
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


def _too_many_blocks(count: int) -> str:
    return f"{count} blocks, more than the limit of {MAX_BLOCKS} blocks per cell"


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


def canonical_cell(cell: Cell, where: str = "cell") -> list:
    """A canonical form of ``cell``, equal exactly for equivalent cells (canonical form v2).

    Two cells are equivalent when one becomes the other by swapping the two operands of blocks
    and by renumbering blocks in any order their dependencies allow (block order only matters
    through data flow). Concatenation is treated as commutative because a channel permutation
    of a cell output is absorbed by the 1x1 convolution that every consumer applies first.
    Nothing else is an equivalence: in particular two blocks with identical ops and inputs are
    *not* interchangeable with one block read twice, because every block has its own weights
    (which states share a producer changes the network, its parameter count and its function).

    The form is the cell renumbered by a canonical labelling of its data-flow graph,
    ``[[[[input, op], [input, op]], combine] for each block], sorted concatenated states]``,
    with blocks in a dependency-respecting order and each block's operands sorted. It replaces
    v1, the smallest such serialisation over *every* dependency-respecting block order, which
    was exact but factorial in B; the equivalence classes are the same. The labelling:

    1. Signature refinement (Merkle-style, in both directions): every state starts with a
       label (its depth, which cell input it is or its combine, how often it is concatenated);
       classes of equal labels are split by the multiset of (op, class) of their operands and
       of their consumers until nothing splits (colour refinement, at most O(B^2 log B) and
       near-linear for real cells). Operands are compared as a multiset, so operand order does
       not matter; labels start with the depth, so every labelling is a topological order.
       Almost every cell ends here with every state in its own class: that is its labelling.
    2. Classes that remain are look-alike blocks whose signatures are equal but whose sharing
       differs. Each member of the first such class is tried as the first one
       (individualisation), refinement runs again, and the smallest resulting form wins. A
       branch that is the image of an explored one under a symmetry of the cell is skipped
       (twin blocks, with literally the same inputs and consumers, and symmetries found when
       two branches give the same form), so even 64 look-alike blocks take milliseconds.
       (An exact form is as hard as graph isomorphism in general, since a cell of twin blocks
       and blocks reading two of them can encode any graph, so this step has no polynomial
       bound in theory; it only runs for look-alike blocks and :data:`MAX_BLOCKS` bounds it.)

    Cells over :data:`MAX_BLOCKS` are refused (:class:`GenotypeError`), as validation does.
    """
    if len(cell.blocks) > MAX_BLOCKS:
        raise GenotypeError(f"{where}.blocks: {_too_many_blocks(len(cell.blocks))}")
    n = NUM_CELL_INPUTS + len(cell.blocks)
    ins: list[tuple[tuple[str, int], ...]] = [()] * NUM_CELL_INPUTS
    outs: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    for k, b in enumerate(cell.blocks):
        v = NUM_CELL_INPUTS + k
        ins.append(((b.op_1, b.input_1), (b.op_2, b.input_2)))
        for op, u in ins[v]:
            if not 0 <= u < n or u == v:
                raise GenotypeError(
                    f"{where}.blocks[{k}]: input state {u} is out of range 0..{n - 1}"
                )
            outs[u].append((op, v))
    depth = _depths(ins, n, where)
    concat_count = [0] * n
    for i in cell.output_states():
        if not 0 <= i < n:
            raise GenotypeError(f"{where}.concat: state {i} is out of range 0..{n - 1}")
        concat_count[i] += 1
    labels = [
        (
            depth[v],
            v if v < NUM_CELL_INPUTS else NUM_CELL_INPUTS,
            _combine(cell, v),
            concat_count[v],
        )
        for v in range(n)
    ]
    twin_keys = [(labels[v], tuple(sorted(ins[v])), tuple(sorted(outs[v]))) for v in range(n)]
    search = _LabellingSearch(cell, ins, outs, _ranks(twin_keys), concat_count)
    search.run(*search.root(labels), [])
    assert search.best is not None
    return search.best[0]


def _combine(cell: Cell, state: int) -> str:
    return "" if state < NUM_CELL_INPUTS else cell.blocks[state - NUM_CELL_INPUTS].combine


def _depths(ins: list[tuple[tuple[str, int], ...]], n: int, where: str) -> list[int]:
    """Longest path from a cell input to each state (Kahn's algorithm; rejects cycles)."""
    waiting = [len({u for _, u in ins[v]}) for v in range(n)]
    readers: list[set[int]] = [set() for _ in range(n)]
    for v in range(n):
        for _, u in ins[v]:
            readers[u].add(v)
    depth = [0] * n
    ready = [v for v in range(n) if not waiting[v]]
    done = 0
    while ready:
        u = ready.pop()
        done += 1
        for v in readers[u]:
            depth[v] = max(depth[v], depth[u] + 1)
            waiting[v] -= 1
            if not waiting[v]:
                ready.append(v)
    if done != n:
        raise GenotypeError(
            f"{where}.blocks: the inputs form a cycle; a block may only read earlier states"
        )
    return depth


def _ranks(keys: Sequence) -> list[int]:
    """Replace each key by its rank among the distinct keys (0, 1, ...)."""
    index = {key: r for r, key in enumerate(sorted(set(keys)))}
    return [index[key] for key in keys]


class _LabellingSearch:
    """Individualisation-refinement search for the smallest form (see :func:`canonical_cell`).

    A labelling is an ordered partition of the states: ``colours[v]`` is the position where
    v's class starts and ``cells`` maps each start to the class's states. Positions come only
    from isomorphism-invariant data (labels, ops, directions), so the search trees of two
    equivalent cells are the same up to renaming and the result, the smallest leaf form, is
    canonical. Pruning only skips subtrees that are images of explored ones under an
    automorphism of the cell, which have the same leaf forms.
    """

    def __init__(self, cell, ins, outs, twins, concat_count) -> None:
        self.cell = cell
        self.ins = ins
        self.outs = outs
        self.n = len(ins)
        self.twins = twins  # equal value: same inputs, consumers, combine (swapping is free)
        self.concat_count = concat_count
        self.first: tuple[list[int], list[int], list] | None = None  # path, colours, form
        self.best: tuple[list, list[int]] | None = None  # form, colours
        self.automorphisms: list[list[int]] = []

    def root(self, labels: list) -> tuple[list[int], dict[int, list[int]]]:
        """The coarsest stable partition that orders states by their labels."""
        colours = [0] * self.n
        cells: dict[int, list[int]] = {}
        start = 0
        for label in sorted(set(labels)):
            members = [v for v in range(self.n) if labels[v] == label]
            cells[start] = members
            for v in members:
                colours[v] = start
            start += len(members)
        self.refine(colours, cells, list(cells))
        return colours, cells

    def refine(self, colours: list[int], cells: dict[int, list[int]], queue: list[int]) -> None:
        """Split classes (in place) by their operand and consumer edges into each class in
        ``queue``, and into every class that splits off, until stable (colour refinement)."""
        heapq.heapify(queue)
        queued = set(queue)
        while queue and len(cells) < self.n:
            start = heapq.heappop(queue)
            queued.discard(start)
            splitter = cells[start]
            edges: dict[int, list[tuple[int, str]]] = {}
            for w in splitter:
                for op, x in self.outs[w]:  # x reads w
                    edges.setdefault(x, []).append((0, op))
                for op, x in self.ins[w]:  # w reads x
                    edges.setdefault(x, []).append((1, op))
            for touched in sorted({colours[x] for x in edges}):
                members = cells[touched]
                if len(members) == 1:
                    continue
                groups: dict[tuple, list[int]] = {}
                for x in members:
                    groups.setdefault(tuple(sorted(edges.get(x, ()))), []).append(x)
                if len(groups) == 1:
                    continue
                position = touched  # the fragments, in key order, take the class's positions
                for key in sorted(groups):
                    fragment = groups[key]
                    cells[position] = fragment
                    for x in fragment:
                        colours[x] = position
                    if position not in queued:
                        heapq.heappush(queue, position)
                        queued.add(position)
                    position += len(fragment)

    def run(self, colours: list[int], cells: dict[int, list[int]], path: list[int]) -> int | None:
        """Explore below ``path``; returns a depth to jump back to, or None."""
        target = min((s for s, members in cells.items() if len(members) > 1), default=None)
        if target is None:
            return self.leaf(colours, path)
        explored: list[int] = []
        orbits = _Orbits(cells[target])
        for v in sorted(cells[target]):
            if explored and self.redundant(v, explored, path, orbits):
                continue
            explored.append(v)
            # v first, the rest of its class after it; the old partition was stable, so
            # splitting by {v} alone is enough to make the new one stable
            child_colours, child_cells = list(colours), dict(cells)
            rest = [x for x in cells[target] if x != v]
            child_cells[target], child_cells[target + 1] = [v], rest
            for x in rest:
                child_colours[x] = target + 1
            self.refine(child_colours, child_cells, [target])
            jump = self.run(child_colours, child_cells, [*path, v])
            if jump is not None and jump < len(path):
                return jump
        return None

    def redundant(self, v: int, explored: list[int], path: list[int], orbits: _Orbits) -> bool:
        """Is ``v`` the image of an explored sibling under an automorphism fixing ``path``?"""
        if any(self.twins[u] == self.twins[v] for u in explored):
            return True  # swapping two twins is an automorphism that fixes everything else
        for gamma in self.automorphisms[orbits.seen :]:
            if all(gamma[p] == p for p in path):
                orbits.join(gamma)
        orbits.seen = len(self.automorphisms)
        return any(orbits.find(u) == orbits.find(v) for u in explored)

    def leaf(self, colours: list[int], path: list[int]) -> int | None:
        form = self.form(colours)
        if self.first is None or self.best is None:
            self.first = (path, colours, form)
            self.best = (form, colours)
            return None
        first_path, first_colours, first_form = self.first
        if form == first_form:
            self.automorphisms.append(self.mapping(first_colours, colours))
            # the subtree where this path leaves the first path mirrors the first one: skip it
            common = 0
            while first_path[common] == path[common]:
                common += 1
            return common
        if form == self.best[0]:
            self.automorphisms.append(self.mapping(self.best[1], colours))
        elif form < self.best[0]:
            self.best = (form, colours)
        return None

    def mapping(self, colours_from: list[int], colours_to: list[int]) -> list[int]:
        """The automorphism taking the state labelled ``c`` in one leaf to the other's."""
        at = [0] * self.n
        for v, c in enumerate(colours_to):
            at[c] = v
        return [at[c] for c in colours_from]

    def form(self, labels: list[int]) -> list:
        """The cell renumbered by a discrete labelling (a topological order)."""
        at = [0] * self.n
        for v, c in enumerate(labels):
            at[c] = v
        blocks = []
        for c in range(NUM_CELL_INPUTS, self.n):
            v = at[c]
            operands = sorted([[labels[u], op] for op, u in self.ins[v]])
            blocks.append([operands, self.cell.blocks[v - NUM_CELL_INPUTS].combine])
        outputs = sorted(labels[v] for v in range(self.n) for _ in range(self.concat_count[v]))
        return [blocks, outputs]


class _Orbits:
    """Union-find of one class's states under the automorphisms seen so far (``seen``).

    An automorphism that fixes the search path maps the class onto itself.
    """

    def __init__(self, members: list[int]) -> None:
        self.members = members
        self.parent = {v: v for v in members}
        self.seen = 0

    def find(self, v: int) -> int:
        parent = self.parent
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    def join(self, gamma: list[int]) -> None:
        for v in self.members:
            self.parent[self.find(v)] = self.find(gamma[v])


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
        if self.num_blocks > MAX_BLOCKS:
            raise GenotypeError(f"num_blocks: {_too_many_blocks(self.num_blocks)}")
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
    from nasnet.files import FileFormatError, read_json

    try:
        data = read_json(path, "genotype file")
    except FileFormatError as err:
        raise GenotypeError(str(err)) from None
    if isinstance(data, dict) and "genotype" in data and "normal" not in data:
        data = data["genotype"]  # a run's config.json or an exported entry
    try:
        return Genotype.from_dict(data)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


__all__ = [
    "COMBINES",
    "FORMAT_VERSION",
    "MAX_BLOCKS",
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
