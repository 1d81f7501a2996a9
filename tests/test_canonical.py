"""Canonical form v2 against the exact v1 form it replaced (a factorial reference oracle).

v1 (below, verbatim apart from its name) took the smallest serialisation over every
dependency-respecting block order, which is exact but factorial in B; it is only run on small
cells here. Two cells must be equal under v2 exactly when they are equal under v1.
"""

import itertools
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasnet.space import (
    MAX_BLOCKS,
    NUM_CELL_INPUTS,
    OPS,
    Block,
    Cell,
    Genotype,
    GenotypeError,
    SearchSpace,
    canonical_cell,
    validate_genotype,
)

# -- the v1 oracle (nasnet.space before canonical form v2) ------------------------------------


def old_canonical_cell(cell: Cell) -> list:
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


def key(form: list) -> str:
    return repr(form)  # forms are nested lists (unhashable)


# -- random cells and equivalent variants ------------------------------------------------------


def random_cell(rng: random.Random, blocks: int, ops, combines, explicit_concat: bool) -> Cell:
    cell = Cell(
        tuple(
            Block(
                rng.randrange(2 + k),
                rng.randrange(2 + k),
                rng.choice(ops),
                rng.choice(ops),
                rng.choice(combines),
            )
            for k in range(blocks)
        )
    )
    if explicit_concat:
        # every unconsumed block must be listed; consumed states and inputs may be added
        must = [s for s in cell.output_states() if s >= NUM_CELL_INPUTS]
        extra = [s for s in range(cell.num_states) if s not in must and rng.random() < 0.3]
        concat = must + extra or [NUM_CELL_INPUTS + blocks - 1]
        rng.shuffle(concat)
        cell = Cell(cell.blocks, tuple(concat))
    validate_genotype(Genotype(cell, cell))
    return cell


def equivalent_variant(cell: Cell, rng: random.Random) -> Cell:
    """Swap operands, renumber the blocks in a random dependency order, permute the concat."""
    blocks = [
        Block(b.input_2, b.input_1, b.op_2, b.op_1, b.combine) if rng.random() < 0.5 else b
        for b in cell.blocks
    ]
    deps = [{i - 2 for i in (b.input_1, b.input_2) if i >= 2} for b in blocks]
    order: list[int] = []
    while len(order) < len(blocks):
        order.append(
            rng.choice([k for k in range(len(blocks)) if k not in order and deps[k] <= set(order)])
        )
    new = {0: 0, 1: 1} | {2 + old: 2 + pos for pos, old in enumerate(order)}
    renumbered = tuple(
        Block(new[b.input_1], new[b.input_2], b.op_1, b.op_2, b.combine)
        for b in (blocks[k] for k in order)
    )
    concat = None
    if cell.concat is not None:
        concat = [new[i] for i in cell.concat]
        rng.shuffle(concat)
    return Cell(renumbered, None if concat is None else tuple(concat))


def assert_same_classes(cells: list[Cell]) -> int:
    """v1 and v2 induce the same partition of ``cells``; returns the number of classes."""
    old_to_new: dict[str, str] = {}
    new_to_old: dict[str, str] = {}
    for cell in cells:
        old, new = key(old_canonical_cell(cell)), key(canonical_cell(cell))
        assert old_to_new.setdefault(old, new) == new, f"v2 splits a v1 class: {cell}"
        assert new_to_old.setdefault(new, old) == old, f"v2 merges v1 classes: {cell}"
    return len(old_to_new)


# -- oracle comparisons -----------------------------------------------------------------------


def all_cells(ops: tuple[str, ...], blocks: int) -> list[Cell]:
    """Every cell of ``blocks`` add-blocks over ``ops`` (default concat)."""
    choices = [list(itertools.product(range(2 + k), range(2 + k), ops, ops)) for k in range(blocks)]
    return [Cell(tuple(Block(*c) for c in combo)) for combo in itertools.product(*choices)]


def test_v2_matches_v1_on_every_small_cell():
    cells = [c for b in (1, 2, 3) for c in all_cells(("conv_3x3",), b)]
    cells += [c for b in (1, 2) for c in all_cells(("identity", "conv_3x3"), b)]
    classes = assert_same_classes(cells)
    assert classes < len(cells) / 3  # the space really has many equivalent cells


@pytest.mark.slow
def test_v2_matches_v1_on_every_four_block_cell_over_one_op():
    """14,400 cells where look-alike blocks, and so sharing differences, are everywhere."""
    cells = all_cells(("conv_3x3",), 4)
    assert assert_same_classes(cells) < len(cells) / 10


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_v2_matches_v1_on_random_pairs_and_variants(seed):
    rng = random.Random(seed)
    # a small vocabulary makes equal-looking blocks (and so sharing differences) common
    ops = rng.choice([("conv_3x3",), ("identity", "conv_3x3"), OPS])
    combines = rng.choice([("add",), ("add", "concat")])
    explicit = rng.random() < 0.4
    cells = []
    for _ in range(3):
        cell = random_cell(rng, rng.randint(1, 5), ops, combines, explicit)
        cells += [cell, equivalent_variant(cell, rng), equivalent_variant(cell, rng)]
    assert_same_classes(cells)
    for cell in cells[::3]:
        assert canonical_cell(equivalent_variant(cell, rng)) == canonical_cell(cell)


def test_v2_matches_v1_on_many_random_cells():
    rng = random.Random(10)
    cells = []
    for _ in range(400):
        ops = rng.choice([("conv_3x3",), ("identity", "conv_3x3")])
        cells.append(random_cell(rng, rng.randint(1, 5), ops, ("add",), rng.random() < 0.3))
        cells.append(equivalent_variant(cells[-1], rng))
    assert_same_classes(cells)


# -- sharing matters: every block has its own weights ----------------------------------------


def twin_inputs() -> tuple[Block, Block]:
    return Block(0, 1, "conv_3x3", "conv_3x3"), Block(0, 1, "conv_3x3", "conv_3x3")


def test_reading_one_block_twice_differs_from_reading_two_twins():
    a1, a2 = twin_inputs()
    # sep(a1) + sep(a2), the twins have separate weights...
    two = Cell((a1, a2, Block(2, 3, "sep_conv_3x3", "sep_conv_3x3")))
    # ...versus sep(a) + sep(a): one block fewer; a Merkle hash of the outputs alone merges them
    one = Cell((a1, Block(2, 2, "sep_conv_3x3", "sep_conv_3x3")))
    assert canonical_cell(two) != canonical_cell(one)
    assert key(old_canonical_cell(two)) != key(old_canonical_cell(one))


def test_sharing_pattern_that_colour_refinement_alone_cannot_see():
    a1, a2 = twin_inputs()
    sep = "sep_conv_3x3"
    # each output reads both twins, versus each output reads one twin twice
    crossed = Cell((a1, a2, Block(2, 3, sep, sep), Block(2, 3, sep, sep)))
    paired = Cell((a1, a2, Block(2, 2, sep, sep), Block(3, 3, sep, sep)))
    assert canonical_cell(crossed) != canonical_cell(paired)
    assert old_canonical_cell(crossed) != old_canonical_cell(paired)
    rng = random.Random(0)
    for cell in (crossed, paired):
        assert canonical_cell(equivalent_variant(cell, rng)) == canonical_cell(cell)


def test_form_is_a_valid_renumbering_of_the_cell():
    rng = random.Random(3)
    for _ in range(50):
        cell = random_cell(rng, rng.randint(1, 8), OPS, ("add", "concat"), rng.random() < 0.5)
        blocks, outputs = canonical_cell(cell)
        rebuilt = Cell(
            tuple(Block(o[0][0], o[1][0], o[0][1], o[1][1], c) for o, c in blocks), tuple(outputs)
        )
        validate_genotype(Genotype(rebuilt, rebuilt))  # a dependency-respecting order
        assert canonical_cell(rebuilt) == canonical_cell(cell)


# -- speed and the block limit ----------------------------------------------------------------


def independent_cell(blocks: int, same: bool) -> Cell:
    return Cell(
        tuple(
            Block(0, 1, "identity", "conv_3x3" if same else OPS[k % len(OPS)], "add")
            for k in range(blocks)
        )
    )


@pytest.mark.parametrize("same", [False, True])
def test_ten_independent_blocks_hash_fast(same):
    cell = independent_cell(10, same)
    start = time.perf_counter()
    Genotype(cell, cell).canonical_hash()
    assert time.perf_counter() - start < 0.1


def symmetric_cells(blocks: int) -> list[Cell]:
    """Large cells whose blocks look alike: the hard cases for a canonical labelling."""
    half = blocks // 2
    chains = Cell(
        tuple(Block(0, 1, "conv_3x3", "conv_3x3") for _ in range(half))
        + tuple(Block(2 + k, 2 + k, "sep_conv_3x3", "identity") for k in range(blocks - half))
    )
    ring = Cell(
        tuple(Block(0, 1, "conv_3x3", "conv_3x3") for _ in range(half))
        + tuple(
            Block(2 + k, 2 + (k + 1) % half, "sep_conv_3x3", "sep_conv_3x3")
            for k in range(blocks - half)
        )
    )
    ladder = Cell(
        (
            Block(0, 1, "conv_3x3", "conv_3x3"),
            *(Block(2 + k, 1, "sep_conv_3x3", "identity") for k in range(blocks - 1)),
        )
    )
    return [independent_cell(blocks, True), independent_cell(blocks, False), chains, ring, ladder]


def test_max_blocks_genotypes_hash_in_milliseconds():
    rng = random.Random(0)
    space = SearchSpace(num_blocks=MAX_BLOCKS)
    genotypes = [space.sample(rng) for _ in range(5)]
    start = time.perf_counter()
    for g in genotypes:
        g.canonical_hash()
    assert (time.perf_counter() - start) / len(genotypes) < 0.05
    for cell in symmetric_cells(MAX_BLOCKS):
        start = time.perf_counter()
        h = Genotype(cell, cell).canonical_hash()
        assert time.perf_counter() - start < 0.5
        variant = equivalent_variant(cell, rng)
        assert Genotype(variant, variant).canonical_hash() == h


def test_v2_matches_v1_on_small_symmetric_cells():
    rng = random.Random(1)
    cells = []
    for blocks in range(2, 7):
        for cell in symmetric_cells(blocks):
            cells += [cell, equivalent_variant(cell, rng)]
    assert_same_classes(cells)


def test_canonical_form_refuses_cells_over_the_limit():
    big = independent_cell(MAX_BLOCKS + 1, False)
    with pytest.raises(GenotypeError, match=r"^reduction.blocks: 65 blocks, more than the limit"):
        Genotype(independent_cell(2, False), big).canonical_hash()
