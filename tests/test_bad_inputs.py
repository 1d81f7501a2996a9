"""A corpus of bad inputs across the subcommands: each is refused before any work with a
non-zero exit status, no traceback, at most two lines, and a message that names the option or
the file. (Damaged checkpoints and weight files are in tests/test_bad_files.py.)"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from PIL import Image

from nasnet.cli import main
from nasnet.genotypes import NASNET_A
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.store import DB_NAME

TOY = ["--evaluator", "toy", "--executor", "inprocess", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    paths = {"root": str(root)}
    experiment = str(root / "exp")
    run_search(experiment, SearchConfig(strategy="random", evaluator="toy", executor="inprocess",
                                        budget=3))  # fmt: skip
    paths["exp"] = experiment
    paths["file"] = str(root / "plain.txt")
    (root / "plain.txt").write_text("hello\n")
    paths["binary"] = str(root / "binary.json")
    (root / "binary.json").write_bytes(bytes(range(256)) * 4)
    paths["nested"] = str(root / "nested.json")
    (root / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    paths["list"] = str(root / "list.json")
    (root / "list.json").write_text("[1, 2, 3]")
    paths["bad_op"] = str(root / "bad-op.json")
    data = NASNET_A.to_dict()
    data["normal"]["blocks"][0]["ops"][0] = "warp_drive"
    (root / "bad-op.json").write_text(json.dumps(data))
    paths["huge"] = str(root / "huge.json")
    big = NASNET_A.to_dict()
    block = big["normal"]["blocks"][0]
    big["normal"]["blocks"] = [block] * 500
    big["normal"].pop("concat", None)
    (root / "huge.json").write_text(json.dumps(big))
    folder = root / "images"
    for name, count in (("cat", 4), ("dog", 0), ("fox", 4)):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / name / f"{i}.png")
    paths["empty_class"] = str(folder)
    broken = root / "broken-image"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(broken / name / f"{i}.png")
    (broken / "a" / "bad.png").write_bytes(b"not a png at all")
    paths["broken_image"] = str(broken)
    damages = {
        "dropped": "DROP TABLE strategy_states",
        "proposal": "UPDATE trials SET proposal = '{\"id\": 1}' WHERE id = 2",
        "genotype": "UPDATE trials SET genotype = 'garbage' WHERE id = 1",
        "metrics": "UPDATE trials SET metrics = 'not json' WHERE id = 1",
    }
    for name, damage in damages.items():
        target = root / f"damaged-{name}"
        target.mkdir()
        with open(os.path.join(experiment, DB_NAME), "rb") as fh:
            (target / DB_NAME).write_bytes(fh.read())
        conn = sqlite3.connect(target / DB_NAME)
        conn.execute("PRAGMA writable_schema = 0")
        conn.execute(damage)
        conn.commit()
        conn.close()
        paths[f"damaged_{name}"] = str(target)
    garbage = root / "garbage"
    garbage.mkdir()
    with open(os.path.join(experiment, DB_NAME), "rb") as fh:
        blob = bytearray(fh.read())
    blob[4096 : 4096 + 2000] = os.urandom(2000)
    (garbage / DB_NAME).write_bytes(bytes(blob))
    paths["garbage"] = str(garbage)
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / DB_NAME).write_text("this is not sqlite\n" * 100)
    paths["foreign"] = str(foreign)
    bad_config = root / "bad-config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text(json.dumps({"cells": "two"}))
    paths["bad_config"] = str(bad_config)
    return paths


def _new(files: dict[str, str]) -> str:
    return os.path.join(files["root"], "new-experiment")


#: (argv with {placeholders}, what the message must name). Every case must be refused.
CASES: list[tuple[str, str]] = [
    # nasnet search: options of the search, the strategy, the evaluator, the executor, the child
    ("search --out {new} --budget 0", "--budget"),
    ("search --out {new} --budget -5", "--budget"),
    ("search --out {new} --budget x", "--budget"),
    ("search --out {new} --workers 0", "--workers"),
    ("search --out {new} --seed -1", "--seed"),
    ("search --out {new} --seed 1e23", "--seed"),
    ("search --out {new} --blocks 0", "--blocks"),
    ("search --out {new} --blocks 100000", "--blocks"),
    ("search --out {new} --max-failures 0", "--max-failures"),
    ("search --out {new} --strategy hill-climbing", "--strategy"),
    ("search --out {new} --evaluator magic", "--evaluator"),
    ("search --out {new} --executor slurm", "--executor"),
    ("search --out {new} --strategy evolution --population 0", "--population"),
    ("search --out {new} --strategy evolution --population 5 --sample-size 6", "--sample-size"),
    ("search --out {new} --strategy ppo --population 10", "--population"),
    ("search --out {new} --controller-lr nan", "--controller-lr"),
    ("search --out {new} --controller-lr -1", "--controller-lr"),
    ("search --out {new} --controller-batch 0", "--controller-batch"),
    ("search --out {new} --entropy-weight -1", "--entropy-weight"),
    ("search --out {new} --ppo-epochs 0", "--ppo-epochs"),
    ("search --out {new} --strategy-option clip=0", "--strategy-option clip"),
    ("search --out {new} --strategy-option tanh_constant=-2", "--strategy-option tanh_constant"),
    ("search --out {new} --strategy-option lr", "--strategy-option"),
    ("search --out {new} --strategy-option nope=1", "--strategy-option nope"),
    ("search --out {new} --evaluator toy --toy-noise nan", "--toy-noise"),
    ("search --out {new} --evaluator toy --toy-fail-rate 2", "--toy-fail-rate"),
    ("search --out {new} --evaluator toy --toy-crash-rate 0.5 --executor inprocess", "--executor"),
    ("search --out {new} --evaluator toy --toy-delay -1", "--toy-delay"),
    ("search --out {new} --mult-adds-target nan", "--mult-adds-target"),
    ("search --out {new} --mult-adds-target 0", "--mult-adds-target"),
    ("search --out {new} --cost-weight -1", "--cost-weight"),
    ("search --out {new} --threads -1", "--threads"),
    ("search --out {new} --threads 0", "--threads"),
    ("search --out {new} --executor local --cpus-per-child 1", "--cpus-per-child"),
    ("search --out {new} --child-lr -1", "--child-lr"),
    ("search --out {new} --child-lr nan", "--child-lr"),
    ("search --out {new} --child-batch-size 0", "--child-batch-size"),
    ("search --out {new} --child-epochs 0", "--child-epochs"),
    ("search --out {new} --child-cells 0", "--child-cells"),
    ("search --out {new} --child-filters 0", "--child-filters"),
    ("search --out {new} --child-grad-clip nan", "--child-grad-clip"),
    ("search --out {new} --child-aux-weight -1", "--child-aux-weight"),
    ("search --out {new} --child-cutout 100000", "--child-cutout"),
    ("search --out {new} --child-device tpu", "--child-device"),
    ("search --out {new} --child-option seed=3", "--child-option seed"),
    ("search --out {new} --child-option stem=huge", "--child-option stem"),
    ("search --out {new} --image-size -4", "--image-size"),
    ("search --out {new} --image-size 0", "--image-size"),
    ("search --out {new} --dataset nope", "--dataset"),
    ("search --out {new} --dataset cifar10", "--dataset"),
    ("search --out {new} --dataset cifar10:/no/such/file.tar.gz", "/no/such/file.tar.gz"),
    ("search --out {new} --dataset folder:/no/such/folder", "/no/such/folder"),
    ("search --out {new} --dataset synthetic:train=1000000000", "--dataset"),
    ("search --out {new} --dataset synthetic:colour=3", "--dataset"),
    ("search --out {file}", "{file}"),
    ("search --out {exp} --strategy ppo " + " ".join(TOY), "--strategy"),
    ("search --out {exp} --toy-noise 0.3 " + " ".join(TOY), "--toy-noise"),
    ("search --out {damaged_dropped} " + " ".join(TOY), "strategy_states"),
    ("search --out {damaged_proposal} --budget 9 " + " ".join(TOY), "trial 2"),
    ("search --out {garbage} " + " ".join(TOY), "{garbage}"),
    ("search --out {foreign} " + " ".join(TOY), "{foreign}"),
    # nasnet show / export / report
    ("show {root}/missing", "{root}/missing"),
    ("show {exp} --top 0", "--top"),
    ("show {exp} --top -3", "--top"),
    ("show {damaged_genotype}", "trial 1"),
    ("show {damaged_metrics}", "trial 1"),
    ("show {foreign}", "{foreign}"),
    ("show {exp} --draw {root}/cell.bmp", "--draw"),
    ("export {exp} --top 0 -o {root}/x.json", "--top"),
    ("export {exp} -o {file}/x.json", "{file}/x.json"),
    ("export {root}/missing -o {root}/x.json", "{root}/missing"),
    ("report {exp} -o {root}/r.pdf", "-o"),
    ("report {exp} -o {root}/r.png --window 0", "--window"),
    ("report {exp} {root}/missing -o {root}/r.png", "{root}/missing"),
    # nasnet train / evaluate
    ("train --out {new} --epochs 0", "--epochs"),
    ("train --out {new} --lr -1", "--lr"),
    ("train --out {new} --lr nan", "--lr"),
    ("train --out {new} --grad-clip nan", "--grad-clip"),
    ("train --out {new} --aux-weight -1", "--aux-weight"),
    ("train --out {new} --cutout 100000", "--cutout"),
    ("train --out {new} --batch-size 0", "--batch-size"),
    ("train --out {new} --image-size 0", "--image-size"),
    ("train --out {new} --threads -1", "--threads"),
    ("train --out {new} --seed -1", "--seed"),
    ("train --out {new} --drop-path-keep 0", "--drop-path-keep"),
    ("train --out {new} --dropout 1", "--dropout"),
    ("train --out {new} --label-smoothing 2", "--label-smoothing"),
    ("train --out {new} --ema-decay 1", "--ema-decay"),
    ("train --out {new} --momentum 5", "--momentum"),
    ("train --out {new} --device tpu", "--device"),
    ("train --out {new} --genotype {nested}", "{nested}"),
    ("train --out {new} --genotype {binary}", "{binary}"),
    ("train --out {new} --genotype {list}", "{list}"),
    ("train --out {new} --genotype {bad_op}", "warp_drive"),
    ("train --out {new} --genotype nasnet_b", "nasnet_b"),
    ("train --out {new} --dataset folder:{empty_class}", "dog"),
    ("train --out {new} --dataset folder:{broken_image}", "bad.png"),
    ("train --out {file}", "{file}"),
    ("train --out {bad_config}", "config.json"),
    ("evaluate {root}/missing", "{root}/missing"),
    # nasnet transfer / info / draw
    ("transfer {root}/missing --out {new}", "{root}/missing"),
    ("transfer {exp} --top 0 --out {new}", "--top"),
    ("transfer {exp} --epochs 0 --out {new}", "--epochs"),
    ("transfer {binary} --out {new}", "{binary}"),
    ("info {nested}", "{nested}"),
    ("info {huge}", "blocks"),
    ("info nasnet_a --image-size -4", "--image-size"),
    ("info nasnet_a --cells 0", "--cells"),
    ("info nasnet_a --num-classes 0", "--num-classes"),
    ("info nasnet_b", "nasnet_b"),
    ("draw nasnet_a -o {root}/cell.bmp", "cell.bmp"),
    ("draw {binary} -o {root}/cell.svg", "{binary}"),
    ("draw nasnet_a -o {file}/cell.svg", "{file}/cell.svg"),
    ("nonsense", "nonsense"),
]


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_clear_line(argv: str, named: str, files, capsys) -> None:
    values = {**files, "new": _new(files)}
    args = [part.format(**values) for part in argv.split()]
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    text = (out + err).strip()
    assert code not in (0, None), text
    assert "Traceback" not in text and "weights_only" not in text
    assert len(text.splitlines()) <= 2, text
    assert named.format(**values) in text, text
    assert not os.path.exists(os.path.join(values["new"], DB_NAME))  # no experiment created


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 60
