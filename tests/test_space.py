import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasnet.genotypes import NASNET_A, NASNET_A_FIGURE
from nasnet.space import (
    MAX_BLOCKS,
    OPS,
    Block,
    Cell,
    Genotype,
    GenotypeError,
    SearchSpace,
    load_genotype,
    validate_genotype,
)

SPACE = SearchSpace()


def test_thirteen_ops_and_two_combines():
    assert len(OPS) == 13 and len(set(OPS)) == 13
    assert SPACE.combines == ("add", "concat")


def test_action_sizes_grow_with_block_index():
    sizes = SPACE.action_sizes()
    assert len(sizes) == 2 * 5 * 5
    for cell in range(2):
        for k in range(5):
            i1, i2, o1, o2, c = sizes[cell * 25 + k * 5 : cell * 25 + k * 5 + 5]
            assert i1 == i2 == 2 + k
            assert o1 == o2 == 13 and c == 2


def test_nasnet_a_output_states_follow_code_and_figure():
    assert NASNET_A.normal.output_states() == (1, 2, 3, 4, 5, 6)
    assert NASNET_A.reduction.output_states() == (3, 4, 5, 6)
    assert NASNET_A_FIGURE.normal.output_states() == (2, 3, 4, 5, 6)
    assert NASNET_A_FIGURE.reduction.output_states() == (4, 5, 6)


def test_nasnet_a_json_round_trips_byte_for_byte(tmp_path):
    text = NASNET_A.to_json()
    again = Genotype.from_json(text)
    assert again == NASNET_A
    assert again.to_json() == text
    path = tmp_path / "a.json"
    path.write_text(text)
    assert load_genotype(str(path)).to_json() == text


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["normal"]["blocks"][0].update(inputs=[0, 7]), "normal.blocks[0].input_2"),
        (
            lambda d: d["reduction"]["blocks"][2].update(ops=["sep_conv_9x9", "identity"]),
            "reduction.blocks[2].op_1",
        ),
        (lambda d: d["normal"]["blocks"][1].update(combine="mul"), "normal.blocks[1].combine"),
        (lambda d: d["normal"]["blocks"][1].update(inputs="0,1"), "normal.blocks[1].inputs"),
        (lambda d: d.pop("reduction"), "reduction"),
        (lambda d: d["normal"].update(concat=[1, 99]), "normal.concat"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["reduction"]["blocks"].extend([{}] * 60), "reduction.blocks: 65 blocks"),
    ],
)
def test_malformed_genotype_names_the_field(mutate, field):
    data = NASNET_A.to_dict()
    mutate(data)
    with pytest.raises(GenotypeError) as err:
        Genotype.from_dict(data)
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


def test_wrong_block_count_and_unknown_vocabulary():
    with pytest.raises(GenotypeError, match="expected 4"):
        validate_genotype(NASNET_A, num_blocks=4)
    small = SearchSpace(ops=("identity", "sep_conv_3x3", "max_pool_3x3"))
    with pytest.raises(GenotypeError, match=r"normal.blocks\[0\].op_1: unknown op 'sep_conv_5x5'"):
        small.validate(NASNET_A)
    with pytest.raises(GenotypeError, match="unknown op"):
        SearchSpace(ops=("identity", "conv_9x9"))


def test_blocks_per_cell_are_limited():
    assert MAX_BLOCKS == 64
    SearchSpace(num_blocks=MAX_BLOCKS)
    with pytest.raises(ValueError) as err:
        SearchSpace(num_blocks=200)
    assert str(err.value) == "num_blocks: 200 blocks, more than the limit of 64 blocks per cell"
    block = Block(0, 1, "identity", "conv_3x3")
    big = Genotype(Cell((block,) * 200), NASNET_A.reduction)
    with pytest.raises(GenotypeError) as err:
        validate_genotype(big)
    assert str(err.value) == "normal.blocks: 200 blocks, more than the limit of 64 blocks per cell"
    with pytest.raises(GenotypeError, match=r"^normal\.blocks: 200 blocks, more than the limit"):
        Genotype.from_dict(big.to_dict())


def test_invalid_json_is_one_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"normal": ')
    with pytest.raises(GenotypeError) as err:
        load_genotype(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_explicit_concat_must_cover_dead_blocks():
    cell = Cell((Block(0, 1, "identity", "identity"), Block(0, 1, "conv_1x1", "identity")), (3,))
    with pytest.raises(GenotypeError, match="block 0"):
        validate_genotype(Genotype(cell, cell))


# -- codec and canonical hash (property-based) -------------------------------------------------


def spaces():
    return st.builds(
        SearchSpace,
        num_blocks=st.integers(1, 6),
        ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=13, unique=True).map(tuple),
    )


@settings(max_examples=200, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**32 - 1))
def test_codec_round_trip(space, seed):
    actions = space.sample_actions(random.Random(seed))
    genotype = space.decode(actions)
    space.validate(genotype)
    assert space.encode(genotype) == actions
    assert space.decode(space.encode(genotype)) == genotype
    assert all(0 <= a < n for a, n in zip(actions, space.action_sizes(), strict=True))


def test_decode_rejects_out_of_range_actions():
    actions = SPACE.sample_actions(random.Random(0))
    actions[5] = 99
    with pytest.raises(GenotypeError, match=r"actions\[5\]"):
        SPACE.decode(actions)
    with pytest.raises(GenotypeError, match="expected 50"):
        SPACE.decode(actions[:-1])


def swap_operands(cell: Cell, rng: random.Random) -> Cell:
    blocks = []
    for b in cell.blocks:
        if rng.random() < 0.5:
            b = Block(b.input_2, b.input_1, b.op_2, b.op_1, b.combine)
        blocks.append(b)
    return Cell(tuple(blocks), cell.concat)


def renumber(cell: Cell, rng: random.Random) -> Cell:
    """Apply a random dependency-respecting permutation of the blocks."""
    n = len(cell.blocks)
    deps = [{i - 2 for i in (b.input_1, b.input_2) if i >= 2} for b in cell.blocks]
    order, placed = [], set()
    while len(order) < n:
        ready = [k for k in range(n) if k not in placed and deps[k] <= placed]
        k = rng.choice(ready)
        order.append(k)
        placed.add(k)
    new = {0: 0, 1: 1} | {2 + old: 2 + pos for pos, old in enumerate(order)}
    blocks = tuple(
        Block(new[b.input_1], new[b.input_2], b.op_1, b.op_2, b.combine)
        for b in (cell.blocks[k] for k in order)
    )
    concat = None if cell.concat is None else tuple(new[i] for i in cell.concat)
    return Cell(blocks, concat)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_hash_is_equal_for_equivalent_cells(seed):
    rng = random.Random(seed)
    g = SPACE.sample(rng)
    variant = Genotype(
        renumber(swap_operands(g.normal, rng), rng), renumber(swap_operands(g.reduction, rng), rng)
    )
    assert variant.canonical_hash() == g.canonical_hash()


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), position=st.integers(0, 49))
def test_hash_differs_when_one_decision_changes_function(seed, position):
    rng = random.Random(seed)
    actions = SPACE.sample_actions(rng)
    size = SPACE.action_sizes()[position]
    if size == 1:
        return
    changed = list(actions)
    changed[position] = (actions[position] + 1 + rng.randrange(size - 1)) % size
    a, b = SPACE.decode(actions), SPACE.decode(changed)
    if has_twin_blocks(a) or has_twin_blocks(b):
        return  # twins make some rewirings truly equivalent (swap the twins)
    cell_a = a.normal if position < 25 else a.reduction
    cell_b = b.normal if position < 25 else b.reduction
    k = (position % 25) // 5
    ba, bb = cell_a.blocks[k], cell_b.blocks[k]
    swapped = (ba.input_1, ba.op_1, ba.input_2, ba.op_2) == (
        bb.input_2,
        bb.op_2,
        bb.input_1,
        bb.op_1,
    )
    if swapped and ba.combine == bb.combine:
        assert a.canonical_hash() == b.canonical_hash()
    else:
        assert a.canonical_hash() != b.canonical_hash()


def has_twin_blocks(g: Genotype) -> bool:
    for cell in (g.normal, g.reduction):
        forms = [
            (tuple(sorted([(b.input_1, b.op_1), (b.input_2, b.op_2)])), b.combine)
            for b in cell.blocks
        ]
        if len(set(forms)) != len(forms):
            return True
    return False


def test_hash_separates_normal_from_reduction_and_concat_lists():
    swapped = Genotype(NASNET_A.reduction, NASNET_A.normal)
    assert swapped.canonical_hash() != NASNET_A.canonical_hash()
    assert NASNET_A_FIGURE.canonical_hash() != NASNET_A.canonical_hash()
    explicit_default = Genotype(
        Cell(NASNET_A.normal.blocks, NASNET_A_FIGURE.normal.output_states()),
        Cell(NASNET_A.reduction.blocks, NASNET_A_FIGURE.reduction.output_states()),
    )
    assert explicit_default.canonical_hash() == NASNET_A_FIGURE.canonical_hash()


def test_uniform_sampling_covers_every_choice():
    rng = random.Random(0)
    seen = [set() for _ in SPACE.action_sizes()]
    for _ in range(400):
        for pos, a in enumerate(SPACE.sample_actions(rng)):
            seen[pos].add(a)
    assert all(len(s) == n for s, n in zip(seen, SPACE.action_sizes(), strict=True))


def test_search_space_round_trips_through_dict():
    space = SearchSpace(num_blocks=3, ops=("identity", "sep_conv_3x3"))
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize("where, key", [("genotype", "name"), ("normal", "concta"),
                                        ("normal.blocks[0]", "combin")])  # fmt: skip
def test_a_misspelt_key_in_a_genotype_is_refused_not_ignored(where, key):
    data = json.loads(NASNET_A.to_json())
    target = {"genotype": data, "normal": data["normal"],
              "normal.blocks[0]": data["normal"]["blocks"][0]}[where]  # fmt: skip
    target[key] = 1
    with pytest.raises(GenotypeError, match=rf"^{re.escape(where)}\.{key}: unknown key"):
        Genotype.from_dict(data)
