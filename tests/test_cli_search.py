"""``nasnet search`` / ``show`` / ``export`` / ``report`` from the command line, including one
small search with real child training on digits."""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest
import torch

from nasnet.cli import main
from nasnet.space import Genotype, load_genotype
from nasnet.store import DB_NAME, SCHEMA_VERSION

TOY = ["--evaluator", "toy", "--executor", "inprocess", "--quiet"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("cli") / "toy-search")
    args = ["search", "--out", directory, "--strategy", "evolution", "--budget", "25",
            "--population", "8", "--sample-size", "3", "--toy-fail-rate", "0.1", *TOY]  # fmt: skip
    assert main(args) == 0
    return directory


def show_json(directory: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["show", directory, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_show_json(experiment: str, capsys) -> None:
    summary = show_json(experiment, capsys)
    assert summary["finished"] == 25 and summary["failed"] >= 1
    assert summary["strategy"] == "evolution" and summary["budget"] == 25
    trials = summary["trials"]
    assert len(trials) == 25 + summary["failed"]
    assert all({"id", "hash", "status", "reward"} <= set(t) for t in trials)
    done = [t["reward"] for t in trials if t["status"] == "done"]
    assert summary["best_reward"] == max(done)
    assert all(t["reward"] is None for t in trials if t["status"] == "failed")
    board = [entry["reward"] for entry in summary["leaderboard"]]
    assert board == sorted(board, reverse=True) and len(board) == 10


def test_show_table(experiment: str, capsys) -> None:
    capsys.readouterr()
    assert main(["show", experiment, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "reward" in out and "mult-adds" in out
    assert "finished 25 / 25" in out and "normal" in out and "reduction" in out


def test_export(experiment: str, tmp_path, capsys) -> None:
    out = tmp_path / "cells.json"
    assert main(["export", experiment, "--top", "3", "-o", str(out), "--split", str(tmp_path)]) == 0
    entries = json.loads(out.read_text())
    summary = show_json(experiment, capsys)
    assert [e["id"] for e in entries] == [e["id"] for e in summary["leaderboard"][:3]]
    assert len({e["hash"] for e in entries}) == 3
    for entry in entries:
        assert {"id", "hash", "reward", "genotype"} <= set(entry)
        genotype = Genotype.from_dict(entry["genotype"])
        assert genotype.canonical_hash() == entry["hash"]
        split = tmp_path / f"rank{entry['rank']}-{entry['hash'][:8]}.json"
        assert load_genotype(str(split)) == genotype


def test_report_png_and_html(experiment: str, tmp_path, capsys) -> None:
    other = str(tmp_path / "random")
    assert main(["search", "--out", other, "--strategy", "random", "--budget", "12", *TOY]) == 0
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    assert main(["report", experiment, other, "-o", str(png), "--window", "5"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["report", experiment, other, experiment, "-o", str(page)]) == 0
    text = page.read_text()
    assert "data:image/png;base64," in text
    assert text.count("<tr>") == 3 and "evolution" in text and "random" in text  # once each
    capsys.readouterr()
    nowhere = tmp_path / "nowhere" / "r.png"
    assert main(["report", experiment, "-o", str(nowhere)]) == 2  # as export: not created
    assert "no such folder" in capsys.readouterr().err and not nowhere.parent.exists()


def test_moving_average_and_best_so_far() -> None:
    from nasnet.results import best_so_far, moving_average

    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert best_so_far([0.2, 0.1, 0.5, 0.3]) == [0.2, 0.2, 0.5, 0.5]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_user_errors_are_one_line(experiment: str, tmp_path, capsys) -> None:
    assert main(["search", "--out", experiment, "--strategy", "ppo", *TOY]) == 2
    assert "--strategy: this experiment was created with 'evolution'" in _error_line(capsys)
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "no experiment.db" in _error_line(capsys)
    assert main(["report", experiment, "-o", str(tmp_path / "r.pdf")]) == 2
    assert ".png or .html" in _error_line(capsys)
    bad = str(tmp_path / "bad-dataset")
    assert main(["search", "--out", bad, "--dataset", "nope", "--quiet"]) == 2
    assert "--dataset" in _error_line(capsys)


def test_outputs_that_cannot_be_written_or_would_destroy_the_search_are_refused(
    experiment: str, tmp_path, capsys
) -> None:
    database = os.path.join(experiment, DB_NAME)
    with open(database, "rb") as fh:
        before = fh.read()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    capsys.readouterr()
    assert main(["export", experiment, "-o", database]) == 2
    assert "is the run's own experiment.db" in _error_line(capsys)
    assert main(["export", experiment, "-o", str(tmp_path / "x.json"), "--split", str(a_file)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert main(["export", experiment, "-o", str(tmp_path / "cells.csv")]) == 2
    assert "are written as JSON; name the file .json" in _error_line(capsys)
    assert not (tmp_path / "cells.csv").exists()
    for draw, problem in ((f"{a_file}/best.svg", "is a file, not a folder"),
                          (f"{tmp_path}/missing/best.svg", "no such folder")):  # fmt: skip
        assert main(["show", experiment, "--draw", draw]) == 2
        assert problem in _error_line(capsys)
    with open(database, "rb") as fh:
        assert fh.read() == before


def test_transfer_from_a_damaged_database_is_a_one_line_error(tmp_path, capsys) -> None:
    directory = tmp_path / "damaged"
    directory.mkdir()
    (directory / DB_NAME).write_bytes(b"\x00not sqlite at all" * 8)
    capsys.readouterr()
    assert main(["transfer", str(directory), "--out", str(tmp_path / "t"), "--quiet"]) == 2
    assert "not a nasnet experiment database" in _error_line(capsys)


def test_the_failure_limit_names_the_flag_that_lets_the_search_go_on(tmp_path, capsys) -> None:
    directory = str(tmp_path / "failing")
    argv = ["search", "--out", directory, "--budget", "3", "--toy-fail-rate", "1", *TOY]
    assert main([*argv, "--max-failures", "2"]) == 2
    line = _error_line(capsys)
    assert re.search(r"stopped: 4 children failed \(limit 2, --max-failures\)", line)
    assert line.rstrip().endswith("raise --max-failures to go on")
    drawing = tmp_path / "best.svg"
    assert main(["show", directory, "--draw", str(drawing)]) == 2
    assert "no finished children to draw yet" in _error_line(capsys)
    assert not drawing.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_children_on_a_missing_gpu_are_refused_before_the_search_starts(tmp_path, capsys):
    directory = tmp_path / "gpu"
    assert main(["search", "--out", str(directory), "--child-device", "cuda", *TOY]) == 2
    assert "--child-device: cuda: no CUDA device is available here" in _error_line(capsys)
    assert not directory.exists()


def test_an_export_list_given_as_a_genotype_says_how_to_split_it(experiment, tmp_path, capsys):
    cells = str(tmp_path / "cells.json")
    assert main(["export", experiment, "-o", cells]) == 0
    capsys.readouterr()
    assert main(["draw", cells, "-o", str(tmp_path / "cells.svg")]) == 2
    assert "written by 'nasnet export'" in _error_line(capsys)
    assert main(["transfer", experiment, "--out", experiment, "--quiet"]) == 2
    assert "is the source itself" in _error_line(capsys)


def test_search_and_train_refuse_each_others_folders(experiment, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["search", "--out", str(run), *TOY]) == 2
    assert "holds a 'nasnet train' run" in _error_line(capsys)
    assert main(["train", "--out", experiment, "--quiet"]) == 2
    assert "holds a 'nasnet search'" in _error_line(capsys)
    assert sorted(os.listdir(run)) == ["config.json"]
    for command in ("train", "search"):
        assert main([command, "--out", "", "--quiet"]) == 2
        assert "the output directory's name is empty" in _error_line(capsys)


def test_newer_schema_is_a_one_line_error(tmp_path, capsys) -> None:
    directory = str(tmp_path / "exp")
    assert main(["search", "--out", directory, "--budget", "2", *TOY]) == 0
    with sqlite3.connect(f"{directory}/{DB_NAME}") as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    capsys.readouterr()
    for command in (["show", directory], ["search", "--out", directory, *TOY]):
        assert main(command) == 2
        assert "newer than this nasnet" in _error_line(capsys)


def test_resume_extends_the_budget(tmp_path, capsys) -> None:
    directory = str(tmp_path / "exp")
    assert main(["search", "--out", directory, "--strategy", "ppo", "--budget", "5", *TOY]) == 0
    assert main(["search", "--out", directory, "--budget", "9", *TOY]) == 0
    summary = show_json(directory, capsys)
    assert summary["finished"] == 9 and summary["budget"] == 9
    assert [t["id"] for t in summary["trials"]] == list(range(1, 10))


@pytest.mark.slow
def test_small_real_search_on_digits(tmp_path, capsys) -> None:
    directory = str(tmp_path / "digits")
    args = ["search", "--out", directory, "--budget", "3", "--workers", "2", "--quiet",
            "--child-epochs", "1", "--child-cells", "1", "--child-filters", "4"]  # fmt: skip
    assert main(args) == 0
    summary = show_json(directory, capsys)
    assert summary["finished"] == 3 and summary["failed"] == 0
    assert summary["config"]["evaluator"] == "train" and summary["config"]["executor"] == "local"
    for trial in summary["trials"]:
        assert 0.0 <= trial["reward"] <= 1.0
        assert trial["reward"] == trial["val_accuracy"]
        assert trial["params"] > 0 and trial["mult_adds"] > 0
        assert "test_accuracy" not in trial  # the search never looks at the test split
        assert trial["worker"].startswith("local:")
    assert summary["best_reward"] > 0.1  # better than chance on 10 classes


def test_search_help_lists_every_strategy_evaluator_and_executor():
    from nasnet.cli import build_parser
    from nasnet.evaluators import EVALUATORS
    from nasnet.executors import executor_names
    from nasnet.strategies import STRATEGIES

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    helps = {a.option_strings[0]: a.help for a in subparsers.choices["search"]._actions if a.help}
    for flag, names in (("--strategy", STRATEGIES), ("--evaluator", EVALUATORS),
                        ("--executor", executor_names())):  # fmt: skip
        assert all(name in helps[flag] for name in names), (flag, helps[flag])
    epilog = subparsers.choices["search"].epilog  # the defaults a new search gets
    assert "warmup_steps=1000" in epilog and "normalize_free_ops=True" in epilog


@pytest.mark.parametrize("signum, status, said", [("SIGTERM", 143, "terminated"),
                                                  ("SIGINT", 130, "interrupted")])  # fmt: skip
def test_the_exit_status_follows_the_signal_when_a_library_swallows_its_exception(
    monkeypatch, capsys, signum, status, said
):
    """Ray's ``ray.wait`` runs signal handlers from native code and raises a plain
    KeyboardInterrupt whatever the handler raised; a SIGTERM stays 'terminated' (143)."""
    import signal

    import nasnet.cli

    def blocked_in_native_code(args):
        try:
            signal.raise_signal(getattr(signal, signum))
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None  # the class is lost, as in Ray's loop

    args = nasnet.cli.build_parser().parse_args(["info", "nasnet_a"])
    args.func = blocked_in_native_code
    parser = type("Parser", (), {"parse_args": lambda self, argv: args})()
    monkeypatch.setattr(nasnet.cli, "build_parser", lambda: parser)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        assert main(["info", "nasnet_a"]) == status
    finally:
        signal.signal(signal.SIGINT, previous)
    assert f"nasnet info: {said}" in capsys.readouterr().err
