import pytest
import torch

import nasnet
from nasnet.pretrained import WeightMappingError, load_pretrained, map_state_dict
from tests import oracles


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the large model is the heaviest thing in the suite
    yield
    torch.set_num_threads(previous)


@torch.no_grad()
def randomize(model, calibration_size):
    """Random weights with BN statistics calibrated so that logits stay O(1)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
    model.train()
    model(torch.randn(2, 3, calibration_size, calibration_size))
    return model.eval()


def cadene_logits(source, x):
    """Cadene's head pools with a fixed window sized for the preset input; at other sizes
    use the same layers with global pooling."""
    return source.last_linear(torch.relu(source.features(x)).mean((2, 3)))


@torch.no_grad()
def assert_same_logits(source, ours, size, background=False):
    x = torch.randn(2, 3, size, size)
    expected = cadene_logits(source, x) if hasattr(source, "features") else source(x)
    if background:
        expected = expected[:, 1:]
    diff = (ours(x) - expected).abs().max().item()
    assert diff <= 1e-4, f"max |difference| {diff} at {size}x{size}"


def test_timm_large_logits_match():
    timm = oracles.timm_module()
    source = randomize(timm.create_model("nasnetalarge", pretrained=False), 224)
    ours = load_pretrained(nasnet.create_model("nasnet_a_large"), source.state_dict(), "timm")
    assert ours.config.pool_padding == "timm"
    for size in (331, 267):
        assert_same_logits(source, ours.eval(), size)


def test_cadene_large_1001_classes_logits_match():
    cadene = oracles.cadene_module("nasnet")
    source = randomize(cadene.NASNetALarge(num_classes=1001), 331)
    ours = load_pretrained(
        nasnet.create_model("nasnet_a_large", num_classes=1000), source.state_dict(), "cadene"
    ).eval()
    assert ours.config.pool_padding == "tf"
    with torch.no_grad():  # Cadene's own head at the preset size
        x = torch.randn(1, 3, 331, 331)
        assert (source(x)[:, 1:] - ours(x)).abs().max() <= 1e-4
    assert_same_logits(source, ours.eval(), 267, background=True)


def test_cadene_mobile_logits_match():
    cadene = oracles.cadene_module("nasnet_mobile")
    source = randomize(cadene.NASNetAMobile(num_classes=1000), 224)
    ours = load_pretrained(
        nasnet.create_model("nasnet_a_mobile"), source.state_dict(), "cadene"
    ).eval()
    with torch.no_grad():  # Cadene's own head at the preset size
        x = torch.randn(2, 3, 224, 224)
        assert (source(x) - ours(x)).abs().max() <= 1e-4
    for size in (224, 256):
        assert_same_logits(source, ours.eval(), size)


def test_import_weights_cli_round_trip(tmp_path):
    cadene = oracles.cadene_module("nasnet_mobile")
    source = randomize(cadene.NASNetAMobile(num_classes=1001), 224)
    path = tmp_path / "mobile.pth"
    torch.save(source.state_dict(), path)
    out = tmp_path / "mobile_nasnet.pt"
    from nasnet.cli import main
    from nasnet.pretrained import load_imported

    assert main(["import-weights", str(path), "--from", "cadene", "-o", str(out)]) == 0
    model = load_imported(str(out))
    assert model.num_classes == 1001
    assert_same_logits(source, model.eval(), 224)


def test_load_pretrained_is_top_level_as_the_readme_shows():
    """``nasnet.load_pretrained(model, state_dict, source="timm"|"cadene")``."""
    cadene = oracles.cadene_module("nasnet_mobile")
    state_dict = cadene.NASNetAMobile(num_classes=1000).state_dict()  # (logits: tests above)
    assert "load_pretrained" in nasnet.__all__ and nasnet.load_pretrained is load_pretrained
    model = nasnet.create_model("nasnet_a_mobile")
    assert nasnet.load_pretrained(model, state_dict, source="cadene") is model
    assert model.config.pool_padding == "tf"
    assert torch.equal(model.classifier.weight, state_dict["last_linear.weight"])
    model = nasnet.create_model("nasnet_a_mobile")  # timm uses the same names
    nasnet.load_pretrained(model, state_dict, source="timm")
    assert model.config.pool_padding == "timm"


def test_imported_weight_file_round_trip(tmp_path):
    from nasnet.pretrained import classifier_rows, infer_preset, load_imported, save_imported

    with torch.device("meta"):
        large = nasnet.create_model("nasnet_a_large")
    assert infer_preset({k: 0 for k in _port_names(large)}) == "nasnet_a_large"
    assert classifier_rows({"last_linear.weight": torch.zeros(1001, 4)}) == 1001
    assert classifier_rows({}) == 1000
    model = nasnet.create_model("nasnet_a_mobile", num_classes=7, pool_padding="timm").eval()
    path = save_imported(model, "nasnet_a_mobile", str(tmp_path / "mobile.pt"))
    loaded = load_imported(path, "nasnet_a_mobile")
    assert loaded.num_classes == 7 and loaded.config == model.config
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())


def _port_names(model):
    """Cell prefixes in the ports' naming for a model with 2 stem cells (ImageNet stem)."""
    n = model.config.cells
    names = ["cell_stem_0.x", "cell_stem_1.x", "reduction_cell_0.x", "reduction_cell_1.x"]
    return names + [f"cell_{i}.x" for i in range(3 * n)]


def test_wrong_checkpoint_is_reported():
    model = nasnet.create_model("nasnet_a_mobile")
    with pytest.raises(WeightMappingError, match="cells"):
        map_state_dict(model, {"cell_0.conv_1x1.conv.weight": torch.zeros(1)}, "timm")
    with torch.device("meta"):
        large = nasnet.create_model("nasnet_a_large")
    with pytest.raises(WeightMappingError, match="0 cells"):
        map_state_dict(large, {"fc.weight": torch.zeros(1)}, "timm")
    timm = oracles.timm_module()
    state = timm.create_model("nasnetalarge", pretrained=False).state_dict()
    state["cell_3.comb_iter_9_left.weight"] = torch.zeros(1)
    with pytest.raises(WeightMappingError, match=r"cell_3\.comb_iter_9_left"):
        map_state_dict(large, state, "timm")
