"""A torchvision model through the search (skipped with a reason where torchvision is missing)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                reason="torchvision is not installed (pip install 'mixbits[vision]')")


def test_torchvision_resnet18_with_ten_classes_goes_through_search(tmp_path):
    from mixbits.models import create_model
    from mixbits.run import RunConfig, run_search

    m = create_model("torchvision:resnet18", in_channels=1, num_classes=10, input_size=8)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    report = run_search(RunConfig(data="digits", model="torchvision:resnet18", target="16x", train_subset=96,
                                  float_epochs=1, search_epochs=2, finetune_epochs=1, batch_size=32, device="cpu",
                                  out=str(tmp_path / "run")), progress=False)
    assert report["totals"]["quantized_bits"] <= report["budget_bits"]
    assert (tmp_path / "run" / "finetuned.pt").is_file()
