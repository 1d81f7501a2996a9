import numpy as np
import pytest
import torch

import nasnet
from nasnet.counting import image_shape


@pytest.fixture(scope="module")
def mobile():
    with torch.device("meta"):
        return nasnet.create_model("nasnet_a_mobile")


@pytest.mark.parametrize(
    "size",
    [224, (3, 224, 224), [3, 224, 224], (1, 3, 224, 224), (8, 3, 224, 224),
     torch.Size([2, 3, 224, 224]), np.int64(224), (np.int64(3), 224, 224)],
)  # fmt: skip
def test_every_accepted_form_counts_one_image(mobile, size):
    """A side, (C, H, W) and (N, C, H, W) all give the per-image count (563.6 M)."""
    assert nasnet.count_mult_adds(mobile, size) == 563_638_816


def test_channels_and_non_square_sizes_are_used():
    model = nasnet.build_network(nasnet.NASNET_A, cells=1, filters=8, in_chans=1)
    square = nasnet.count_mult_adds(model, (1, 32, 32))
    assert nasnet.count_mult_adds(model, (5, 1, 32, 32)) == square
    assert nasnet.count_mult_adds(model, (1, 32, 64)) > square


@pytest.mark.parametrize(
    "size",
    [(224, 224), (1, 1, 3, 224, 224), (), 0, -1, (3, 0, 224), (1, 3, -224, 224), True,
     (True, 224, 224), 224.0, (3, 224.5, 224), "224", None, [[3, 224, 224]]],
)  # fmt: skip
def test_anything_else_is_a_one_line_value_error(mobile, size):
    with pytest.raises(ValueError, match=r"^input_size: expected an image side") as info:
        nasnet.count_mult_adds(mobile, size)
    assert "\n" not in str(info.value) and "(N, C, H, W)" in str(info.value)


def test_image_shape():
    assert image_shape(32) == (3, 32, 32)
    assert image_shape((1, 28, 28)) == (1, 28, 28)
    assert image_shape((64, 1, 28, 30)) == (1, 28, 30)
