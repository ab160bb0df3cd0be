"""torchvision models (skipped with a reason where torchvision is missing).

The search test takes minutes on a busy 2-core CPU (ResNet-18 has 11M weights), so it is
marked slow: ``pytest --runslow tests/test_models_torchvision.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                reason="torchvision is not installed (pip install 'mixbits[vision]')")


def test_torchvision_resnet18_follows_the_data_shape():
    from mixbits.models import create_model

    m = create_model("torchvision:resnet18", in_channels=1, num_classes=10, input_size=8)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        create_model("torchvision:resnet19", in_channels=3, num_classes=10, input_size=32)


@pytest.mark.slow
def test_torchvision_resnet18_with_ten_classes_goes_through_search(tmp_path):
    from mixbits.run import RunConfig, run_search

    report = run_search(RunConfig(data="digits", model="torchvision:resnet18", target="16x", train_subset=96,
                                  float_epochs=1, search_epochs=2, finetune_epochs=1, batch_size=32, device="cpu",
                                  out=str(tmp_path / "run")), progress=False)
    assert report["totals"]["quantized_bits"] <= report["budget_bits"]
    assert (tmp_path / "run" / "finetuned.pt").is_file()
