"""The model zoo: output shapes, pinned parameter counts, name resolution and clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from mixbits.models import MODELS, create_model
from mixbits.models.external import adapt_input_channels_
from mixbits.models.resnet_cifar import PadShortcut


@pytest.mark.parametrize("name,in_channels,size,params", [
    ("lenet5", 1, 28, 61_706),
    ("resnet20", 3, 32, 269_722),  # He et al. 2016: 0.27M
    ("resnet32", 3, 32, 464_154),  # 0.46M
    ("resnet56", 3, 32, 853_018),  # 0.85M
    ("vgg_small", 3, 32, 4_660_106),
    ("mobilenetv2_cifar", 3, 32, 2_236_682),
])
def test_output_shape_and_parameter_count(name, in_channels, size, params):
    m = create_model(name, in_channels=in_channels, num_classes=10, input_size=size)
    assert sum(p.numel() for p in m.parameters()) == params
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, in_channels, size, size)).shape == (2, 10)


def test_resnet_depth_counts_weight_layers_and_shortcuts_are_option_a():
    for depth in (20, 32, 56):
        m = create_model(f"resnet{depth}", in_channels=3, num_classes=10, input_size=32)
        weight_layers = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]
        assert len(weight_layers) == depth
        pads = [x for x in m.modules() if isinstance(x, PadShortcut)]
        assert len(pads) == 2 and all(not list(p.parameters()) for p in pads)
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = PadShortcut(16, 32, 2)(x)  # (2, 32, 2, 2): channels 8..23 carry x[:, :, ::2, ::2]
    assert y.shape == (2, 32, 2, 2) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any()


def test_models_follow_the_data_shape():
    m = create_model("resnet20", in_channels=1, num_classes=7, input_size=28)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    m = create_model("lenet5", in_channels=3, num_classes=4, input_size=32)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="divisible by 8"):
        create_model("vgg_small", in_channels=3, num_classes=10, input_size=28)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet21'; known: .*lenet5.*resnet20.*vgg_small"):
        create_model("resnet21", in_channels=3, num_classes=10, input_size=32)
    assert {"lenet5", "resnet20", "resnet32", "resnet56", "vgg_small", "mobilenetv2_cifar"} <= set(MODELS.names())


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_torchvision_missing_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'mixbits\[vision\]'"):
        create_model("torchvision:resnet18", in_channels=3, num_classes=10, input_size=32)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_missing_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'mixbits\[timm\]'"):
        create_model("timm:resnet18", in_channels=3, num_classes=10, input_size=32)


def test_user_model_gets_only_the_arguments_it_takes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "usermodels_zoo.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
        "def not_a_model(**kw):\n    return 3\n")
    m = create_model("usermodels_zoo:tiny", in_channels=1, num_classes=5, input_size=8)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="returned a int, not a torch.nn.Module"):
        create_model("usermodels_zoo:not_a_model", in_channels=1, num_classes=5, input_size=8)


def test_adapt_input_channels_replaces_the_first_conv_only():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    adapt_input_channels_(m, 1)
    assert m[0].in_channels == 1 and m[1].in_channels == 4
    with pytest.raises(ValueError, match="no Conv2d"):
        adapt_input_channels_(nn.Linear(3, 3), 1)
