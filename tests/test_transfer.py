import json
import os

import pytest

from nasnet.cli import main
from nasnet.genotypes import NASNET_A
from nasnet.options import OptionError
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.train import TrainConfig
from nasnet.transfer import TransferError, _row, resolve_sources, run_transfer, sources_to_resume


@pytest.fixture(scope="module")
def digits_search(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("search"))
    config = SearchConfig(
        strategy="random", evaluator="train", executor="inprocess", budget=3, workers=1,
        seed=1, child=TrainConfig(cells=1, filters=4, epochs=1, eval_test=False),
    )  # fmt: skip
    run_search(directory, config)
    return directory


TINY = {"dataset": "synthetic:train=64,size=16,classes=4", "cells": 1, "filters": 4,
        "epochs": 1, "batch_size": 32, "threads": 1}  # fmt: skip
TRAIN = ["--dataset", "digits", "--cells", "1", "--filters", "6", "--epochs", "1",
         "--batch-size", "128", "--threads", "1"]  # fmt: skip


def test_transfer_retrains_top_cells_with_lineage(digits_search, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = str(tmp_path / "transfer")
    assert main(["transfer", digits_search, "--top", "2", *TRAIN, "--out", out, "--quiet"]) == 0
    summary = json.loads((tmp_path / "transfer" / "transfer.json").read_text())
    assert len(summary["runs"]) == 2 and summary["config"]["filters"] == 6
    for run in summary["runs"]:
        assert run["status"] == "done" and run["experiment"] and run["trial_id"] is not None
        lineage = json.loads((tmp_path / "transfer" / run["run"] / "lineage.json").read_text())
        assert lineage["hash"] == run["hash"] and lineage["trial_id"] == run["trial_id"]
    capsys.readouterr()

    assert main(["show", out, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["hash"] for r in shown["runs"]] == summary["hashes"]
    assert main(["show", out, "--json", "--top", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 1

    assert main(["show", digits_search, "--json"]) == 0
    search = json.loads(capsys.readouterr().out)
    assert [t["transfer"] for t in search["transfers"]] == [out]
    best = [entry["hash"] for entry in search["leaderboard"][:2]]
    assert best == summary["hashes"]

    assert main(["show", out]) == 0
    text = capsys.readouterr().out
    assert "transfer to digits" in text and f"lineage: from {digits_search}" in text
    assert summary["runs"][0]["hash"][:8] in text
    monkeypatch.delenv("COLUMNS")  # piped output is never cut to 80 columns
    assert main(["show", out]) == 0
    text = capsys.readouterr().out
    assert "…" not in text and all(run["run"] in text for run in summary["runs"])

    # other training options on the same folder are refused, naming the flag and both values
    changed = [*TRAIN[:-4], "--batch-size", "64", "--threads", "1"]
    assert main(["transfer", digits_search, "--top", "2", *changed, "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size:" in err and "with 128, not 64" in err
    assert main(["transfer", digits_search, "--top", "1", "--out", out, "--quiet"]) == 2
    assert "--top: the transfer here has 2 cells" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # a usage error: transfer has no --genotype
        main(["transfer", digits_search, "--genotype", "nasnet_a", "--out", out])
    assert "unrecognized arguments: --genotype" in capsys.readouterr().err

    # rerunning resumes, the options and --top left out taken from the saved transfer: nothing
    # is trained again, and the summary keeps both runs
    assert main(["transfer", digits_search, "--out", out, "--quiet"]) == 0
    again = json.loads((tmp_path / "transfer" / "transfer.json").read_text())
    assert again["config"] == summary["config"]
    assert [r["val_accuracy"] for r in again["runs"]] == [
        r["val_accuracy"] for r in summary["runs"]
    ]

    # a larger --top extends the transfer: the first runs are kept, the next cell trained
    assert main(["transfer", digits_search, "--top", "3", "--out", out, "--quiet"]) == 0
    extended = json.loads((tmp_path / "transfer" / "transfer.json").read_text())
    assert extended["hashes"][:2] == summary["hashes"] and len(extended["hashes"]) == 3
    for kept, before in zip(extended["runs"][:2], again["runs"], strict=False):
        assert {k: v for k, v in kept.items() if k != "seconds"} == {
            k: v for k, v in before.items() if k != "seconds"
        }
    assert extended["runs"][2]["status"] == "done"


def test_an_interrupted_transfer_is_shown_with_its_runs_pending(
    digits_search, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")
    out = str(tmp_path / "interrupted")
    sources = resolve_sources(digits_search, 2)
    config = TrainConfig(cells=1, filters=4, epochs=1, threads=1)

    def interrupt(rank, source, event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_transfer(sources, config, out, interrupt)
    capsys.readouterr()
    assert main(["show", out, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in shown["runs"]] == ["pending", "pending"]
    assert [r["hash"] for r in shown["runs"]] == [s.hash for s in sources]
    assert main(["show", out]) == 0
    assert "pending" in capsys.readouterr().out
    assert main(["show", digits_search, "--json"]) == 0
    assert out in [t["transfer"] for t in json.loads(capsys.readouterr().out)["transfers"]]
    rows = run_transfer(sources, config, out)  # the rerun finishes it
    assert [r["status"] for r in rows] == ["done", "done"]
    assert json.loads((tmp_path / "interrupted" / "transfer.json").read_text())["runs"] == rows


def test_transfer_accepts_a_genotype_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(NASNET_A.to_json())
    sources = resolve_sources(str(path), 3)
    assert len(sources) == 1 and sources[0].genotype == NASNET_A and sources[0].trial_id is None


def test_a_resumed_transfer_keeps_its_cells_when_the_search_ranks_others_first(
    digits_search, tmp_path
):
    best = resolve_sources(digits_search, 3)
    rows = [_row(1, best[1], str(tmp_path / "rank-01"), {"status": "done"})]
    previous = {"runs": rows, "hashes": [best[1].hash]}  # retrained when best[1] led the search
    assert sources_to_resume(digits_search, None, previous) == [best[1]]
    assert sources_to_resume(digits_search, 2, previous) == [best[1], best[0]]
    with pytest.raises(OptionError, match="has 2 cells; leave it out to resume"):
        sources_to_resume(digits_search, 1, {"runs": rows * 2})
    # another source listing the same cells first resumes too, keeping the saved lineage
    export = tmp_path / "cells.json"
    export.write_text(json.dumps([{"genotype": s.genotype.to_dict()} for s in best[1:]]))
    assert sources_to_resume(str(export), None, previous) == [best[1]]
    assert sources_to_resume(str(export), 2, previous)[1].origin == str(export)
    with pytest.raises(TransferError, match="does not list the cells of the transfer here"):
        sources_to_resume("nasnet_a", None, previous)


def test_an_export_file_lists_each_cell_once_and_at_least_one(tmp_path):
    entry = {"genotype": NASNET_A.to_dict()}
    path = tmp_path / "cells.json"
    path.write_text(json.dumps([entry, entry]))
    assert [s.genotype for s in resolve_sources(str(path), 5)] == [NASNET_A]
    path.write_text("[]")
    with pytest.raises(TransferError, match="lists no cells"):
        resolve_sources(str(path), 5)


def test_transfer_accepts_a_genotype_name(tmp_path):
    (source,) = resolve_sources("nasnet_a", 2)
    assert source.genotype == NASNET_A and source.origin == "nasnet_a"
    with pytest.raises(TransferError, match="not a known genotype name"):
        resolve_sources("nasnet_b", 2)


A_RUN_WITHOUT_ITS_FIELDS = json.dumps(
    {"config": TrainConfig().to_dict(), "hashes": ["x"], "runs": [{"rank": 1}]}
)


@pytest.mark.parametrize("text", ["garbage", "[]", '{"config": {"epochs": -1}, "hashes": []}',
                                  A_RUN_WITHOUT_ITS_FIELDS])  # fmt: skip
def test_a_damaged_transfer_summary_is_one_line_for_show_and_transfer(tmp_path, capsys, text):
    out = tmp_path / "transfer"
    out.mkdir()
    (out / "transfer.json").write_text(text)
    assert main(["show", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transfer.json" in err and "Traceback" not in err
    assert err.endswith("; move it away to start the transfer in this folder again\n")
    assert main(["transfer", "nasnet_a", *TRAIN, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transfer.json" in err
    assert (out / "transfer.json").read_text() == text  # left for the user to look at


def test_an_interrupted_transfer_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("nasnet.cli.transfer.run_transfer", interrupt)
    assert main(["transfer", "nasnet_a", *TRAIN, "--out", str(tmp_path / "t"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err == "nasnet transfer: interrupted; run the same command again to resume\n"


def test_transfer_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(TransferError, match="no such"):
        resolve_sources(str(tmp_path / "missing"), 2)
    assert main(["transfer", str(tmp_path), "--top", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no search experiment" in err


def test_one_transfer_at_a_time_works_in_a_folder(tmp_path, capsys):
    from nasnet.lock import TRANSFER_BUSY, TRANSFER_LOCK_NAME, ExperimentLock

    source = tmp_path / "cell.json"
    source.write_text(NASNET_A.to_json())
    out = tmp_path / "transfer"
    with ExperimentLock(str(out), TRANSFER_LOCK_NAME, TRANSFER_BUSY):  # as a first one holds it
        assert main(["transfer", str(source), *TRAIN, "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1  # the banner waits for every check
    assert "error:" in error and "another 'nasnet transfer' is running in this folder" in error
    assert not (out / "transfer.json").exists()


def test_a_transfer_needs_a_folder_of_its_own(digits_search, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for out, kind in ((digits_search, "holds a 'nasnet search'"), (str(run), "a training run")):
        before = sorted(os.listdir(out))
        assert main(["transfer", "nasnet_a", *TRAIN, "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and kind in err and "its own folder" in err
        assert sorted(os.listdir(out)) == before


def test_outputs_never_overwrite_a_nasnet_folder_s_own_files(tmp_path, capsys):
    source = tmp_path / "cell.json"
    source.write_text(NASNET_A.to_json())
    out = tmp_path / "transfer"
    rows = run_transfer(resolve_sources(str(source), 1), TrainConfig(**TINY), str(out))
    run = out / rows[0]["run"]
    search = str(tmp_path / "search")
    run_search(search, SearchConfig(strategy="random", evaluator="toy", executor="inprocess",
                                    budget=2))  # fmt: skip
    model = ["export-model", "nasnet_a_cifar", "--image-size", "16", "--no-check"]
    for target, argv in ((run / "config.json", ["export", search]),
                         (out / "transfer.json", ["export", search]),
                         (run / "checkpoint.pt", model)):  # fmt: skip
        before = target.read_bytes()
        assert main([*argv, "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "own" in err and "write elsewhere" in err
        assert target.read_bytes() == before
    assert main(["export", search, "-o", str(tmp_path / "config.json")]) == 0  # elsewhere: fine
