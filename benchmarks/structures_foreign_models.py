"""Bits per structure on models not written for mixbits: export, reload, compare logits.

torchvision ``mobilenet_v2`` and ``resnet18`` (needs torchvision; skipped without it) at
``channel``, and an Embedding + bidirectional LSTM + Linear model at ``group:8``: random logits,
the exact derivation at a target, the bits fixed, ``export_model``, ``load`` into a fresh
instance, the largest logit difference, and the file against its promise. Nothing is trained.

    PYTHONPATH=src /path/to/venv-with-torchvision/bin/python benchmarks/structures_foreign_models.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

import mixbits
from mixbits.search import derive_bits
from mixbits.space import PrepareConfig, prepare_


class TaggerLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True, bidirectional=True)
        self.head = nn.Linear(48, 50)

    def forward(self, x):
        return self.head(self.lstm(self.emb(x))[0])


def check(name: str, make, x: torch.Tensor, granularity: str, ratio: int) -> None:
    torch.manual_seed(0)
    model = make().eval()
    space = prepare_(model, PrepareConfig(granularity=granularity))
    for d in space.decision_list:
        d.logits.data.normal_()
    bits = derive_bits(space, space.cost.float_quantized_bits() // ratio)
    space.fix_(bits)
    with tempfile.TemporaryDirectory() as tmp:
        res = mixbits.export_model(model, space, f"{tmp}/m.mbits")
        loaded = mixbits.load(f"{tmp}/m.mbits", model=make())
        with torch.no_grad():
            diff = float((model(x) - loaded(x)).abs().max())
    print(f"{name} ({granularity}): {space.cost.num_units} units, {space.cost.weight_compression(bits):.2f}x, "
          f"file {res.file_bytes:,} B, promised {res.promised_bytes:,.0f} B, max |logit diff| {diff:.3g}", flush=True)


def main() -> None:
    try:
        import torchvision
    except ImportError:
        print("torchvision not installed: skipping mobilenet_v2 and resnet18")
    else:
        img = torch.randn(2, 3, 64, 64)
        check("torchvision mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10), img, "channel", 16)
        check("torchvision resnet18", lambda: torchvision.models.resnet18(num_classes=10), img, "channel", 16)
    check("Embedding + BiLSTM + Linear", TaggerLSTM, torch.randint(0, 50, (2, 7)), "group:8", 12)
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
