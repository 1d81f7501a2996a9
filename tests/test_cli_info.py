import json
import subprocess
import sys

import pytest

import nasnet
from nasnet.cli import main
from nasnet.genotypes import NASNET_A


def test_info_prints_counts_and_stage_shapes(capsys):
    assert main(["info", "nasnet_a_mobile"]) == 0
    out = capsys.readouterr().out
    assert "5,289,978" in out and "563,638,816" in out
    assert "reduction_cell_1" in out and "1056" in out


def test_info_reads_a_genotype_file(tmp_path, capsys):
    path = tmp_path / "cell.json"
    path.write_text(NASNET_A.to_json())
    assert main(["info", str(path), "--cells", "2", "--filters", "8", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "sep_conv_7x7" in out and "2 @ 192" in out


def test_malformed_genotype_file_is_one_line_and_nonzero(tmp_path):
    data = NASNET_A.to_dict()
    data["normal"]["blocks"][3]["ops"] = ["avg_pool_3x3", "warp_drive"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    proc = subprocess.run(
        [sys.executable, "-m", "nasnet", "info", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "normal.blocks[3].op_2" in lines[0] and "warp_drive" in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file_is_one_line(capsys):
    assert main(["info", "no/such/file.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_registry_lists_presets_and_overrides():
    assert nasnet.list_models() == ["nasnet_a_cifar", "nasnet_a_large", "nasnet_a_mobile"]
    assert nasnet.list_models("*mobile") == ["nasnet_a_mobile"]
    model = nasnet.create_model("nasnet_a_cifar", num_classes=100, cells=1, filters=8)
    assert model.num_classes == 100 and model.config.cells == 1
    with pytest.raises(ValueError, match="unknown model"):
        nasnet.create_model("resnet50")


def test_an_interrupted_command_that_does_not_resume_says_only_that(capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("nasnet.cli.info._print", interrupt)
    assert main(["info", "nasnet_a_cifar"]) == 130
    assert capsys.readouterr().err == "nasnet info: interrupted\n"


def test_ctrl_c_while_the_commands_load_is_one_line(capsys, monkeypatch):
    import nasnet.cli

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(nasnet.cli, "build_parser", interrupt)
    assert main(["info", "nasnet_a_cifar"]) == 130
    assert capsys.readouterr().err == "nasnet: interrupted\n"


def test_the_command_reaches_its_ctrl_c_handling_before_torch_loads():
    """The `nasnet` script imports nasnet.cli, and with it the package, before main() can
    catch a Ctrl-C: that import must not load torch (it takes the first second or two)."""
    code = (
        "import sys, nasnet.cli; print('torch' in sys.modules); "
        "print(nasnet.NASNET_A.normal.concat, nasnet.ops.fast)"  # names and modules, on use
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"


def test_a_preset_refuses_the_options_it_does_not_take(capsys):
    assert main(["info", "nasnet_a_mobile", "--stem", "cifar", "--cells", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--stem, --cells: nasnet_a_mobile is a preset" in err
    assert main(["info", "nasnet_a", "--cells", "2"]) == 0
    assert "N=2, F=32" in capsys.readouterr().out


def test_nasnet_s_own_warnings_are_one_line(capsys, monkeypatch):
    import warnings

    from nasnet.cli import info

    def warn(*args, **kwargs):
        warnings.warn("the cell is odd", stacklevel=2)  # as from nasnet.cli.info
        return 0

    monkeypatch.setattr(info, "_print", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["info", "nasnet_a_cifar"]) == 0
    assert capsys.readouterr().err == "nasnet info: warning: the cell is odd\n"
