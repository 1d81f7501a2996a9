from PIL import Image

from nasnet.cli import main
from nasnet.genotypes import NASNET_A
from nasnet.space import SearchSpace


def test_draw_nasnet_a_names_every_op(tmp_path):
    svg = tmp_path / "cell.svg"
    assert main(["draw", "nasnet_a", "-o", str(svg)]) == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "</svg>" in text
    for cell in (NASNET_A.normal, NASNET_A.reduction):
        for block in cell.blocks:
            assert block.op_1 in text and block.op_2 in text
    assert text.count(">concat<") == 2 and "Normal cell" in text and "Reduction cell" in text


def test_draw_png_is_a_valid_image(tmp_path):
    png = tmp_path / "cell.png"
    assert main(["draw", "nasnet_a", "-o", str(png)]) == 0
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 200


def test_draw_any_sampled_genotype(tmp_path):
    import random

    genotype = SearchSpace().sample(random.Random(3))
    path = tmp_path / "g.json"
    path.write_text(genotype.to_json())
    out = tmp_path / "g.svg"
    assert main(["draw", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    assert all(b.op_1 in text for b in genotype.normal.blocks)


def test_draw_rejects_unknown_format(tmp_path, capsys):
    assert main(["draw", "nasnet_a", "-o", str(tmp_path / "cell.bmp")]) == 2
    assert "unsupported image format" in capsys.readouterr().err


def test_report_html_embeds_the_best_cell(tmp_path):
    from nasnet.search import run_search
    from nasnet.search_config import SearchConfig

    directory = str(tmp_path / "toy")
    run_search(directory, SearchConfig(strategy="random", evaluator="toy", executor="inprocess",
                                       budget=5, workers=1))  # fmt: skip
    out = tmp_path / "report.html"
    assert main(["report", directory, "-o", str(out)]) == 0
    page = out.read_text()
    assert "best cell" in page and "<svg" in page and ">concat<" in page
    assert main(["show", directory, "--draw", str(tmp_path / "best.svg")]) == 0
    assert ">concat<" in (tmp_path / "best.svg").read_text()
