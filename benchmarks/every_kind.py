"""Models the tests never saw (issue 19), each as a new user would run it: defaults, ``hessian`` at 16x.

    python benchmarks/every_weight.py kinds [--only NAME ...]   # one JSON line per model

Per model: a short float training (Adam, synthetic data of the task's kind), ``prepare_`` with
defaults (or the one option the model needs, named in the row), the ``hessian`` method at the
target, one fine-tuning epoch at the chosen bits (the model's own loss), ``export_model``, then
``mixbits.load`` in a fresh Python process into a freshly built model (parametrized, compiled or
peft-wrapped as the user builds it) and the max |difference| of its outputs against the
fine-tuned model's on the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mixbits
from mixbits.data import TensorLoader
from mixbits.export import export_model
from mixbits.finetune import finetune_
from mixbits.methods import AllocationContext, allocate
from mixbits.budget import budget_bits
from mixbits.space import PrepareConfig, prepare_
from mixbits.targets import unwrap_compiled
from mixbits.train import TrainConfig, correct_count, evaluate_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import stamp  # noqa: E402


# ---- the models (built the same way in the fresh process) ----

class ConvAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1))

    def forward(self, x):  # (N, 1, 16, 16) -> (N, 1, 16, 16)
        return self.dec(self.enc(x))


class NormedConvs(nn.Module):
    """A vocoder-style 1D conv stack under a reparametrization of every conv."""

    def __init__(self, norm: str = "weight"):
        super().__init__()
        wrap = (nn.utils.parametrizations.weight_norm if norm == "weight" else nn.utils.parametrizations.spectral_norm)
        self.convs = nn.ModuleList([wrap(nn.Conv1d(c_in, c_out, 5, padding=2))
                                    for c_in, c_out in ((1, 32), (32, 64), (64, 64), (64, 32))])
        self.head = wrap(nn.Conv1d(32, 4, 1))

    def forward(self, x):  # (N, 1, 64) -> (N, 4)
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.1)
        return self.head(x).mean(-1)


class BilinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(16, 32)
        self.bil = nn.Bilinear(32, 32, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x):  # (N, 32) -> (N, 4)
        return self.head(torch.relu(self.bil(torch.tanh(self.a(x[:, :16])), torch.tanh(self.b(x[:, 16:])))))


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(64, 4)

    def forward(self, x):  # (N, 1, 16, 16) -> (N, 4)
        return self.head(self.features(x))


def frozen_backbone() -> nn.Module:
    m = Backbone()
    m.features.requires_grad_(False)
    return m


class MLP(nn.Module):
    def __init__(self, d_in=32, d=256, d_out=4):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, d), nn.Linear(d, d), nn.Linear(d, d_out)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def lora_mlp() -> nn.Module:
    import peft

    torch.manual_seed(0)
    return peft.get_peft_model(MLP(), peft.LoraConfig(r=4, target_modules=["fc1", "fc2", "fc3"]))


def compiled_cnn() -> nn.Module:
    return torch.compile(Backbone())


class BareParameter(nn.Module):
    """The big weight is a bare Parameter used with F.linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(512, 32) * 0.1)
        self.head = nn.Linear(512, 4)

    def forward(self, x):
        return self.head(torch.relu(F.linear(x, self.w)))


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 3, 1))

    def forward(self, x):  # (N, 1, 16, 16) -> (N, 3, 16, 16) per-pixel logits
        return self.body(x)


def regression_mlp() -> nn.Module:
    return MLP(d_out=2)


# ---- the data of each task: (inputs, targets), deterministic ----

def _images(n, g):
    return torch.randn(n, 1, 16, 16, generator=g)


def _classes_from(x):
    flat = x.flatten(1)
    return (flat[:, : flat.shape[1] // 2].mean(1) > 0).long() * 2 + (flat[:, flat.shape[1] // 2:].mean(1) > 0).long()


def data_for(task: str, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if task == "reconstruct":
        x = _images(n, g)
        x = F.avg_pool2d(x, 3, 1, 1)  # smooth images a small autoencoder can learn
        return x, x.clone()
    if task == "signal":
        x = torch.randn(n, 1, 64, generator=g).cumsum(-1) / 8
        return x, _classes_from(x)
    if task == "image":
        x = _images(n, g)
        return x, _classes_from(x)
    if task == "vector":
        x = torch.randn(n, 32, generator=g)
        return x, _classes_from(x)
    if task == "pixels":
        x = F.avg_pool2d(_images(n, g), 3, 1, 1)
        return x, ((x[:, 0] > 0.15).long() + (x[:, 0] > -0.15).long())  # (N, 16, 16) in 0..2
    if task == "regress":
        x = torch.randn(n, 32, generator=g)
        return x, torch.stack([x[:, :8].sum(1) / 3, (x[:, 8:16] * x[:, 16:24]).sum(1) / 3], 1)  # (N, 2)
    raise ValueError(task)


def _mse(out, y):
    return F.mse_loss(out, y)


# name: (builder, task, loss, PrepareConfig kwargs, target, granularity)
MODELS = {
    "autoencoder_convtranspose2d": (ConvAutoencoder, "reconstruct", _mse, {}, "16x"),
    "weight_norm_convs": (lambda: NormedConvs("weight"), "signal", F.cross_entropy, {}, "16x"),
    "spectral_norm_convs": (lambda: NormedConvs("spectral"), "signal", F.cross_entropy, {}, "16x"),
    "bilinear": (BilinearNet, "vector", F.cross_entropy, {}, "16x"),
    "frozen_backbone": (frozen_backbone, "image", F.cross_entropy, {}, "16x"),
    "peft_lora_adapters_float": (lora_mlp, "vector", F.cross_entropy, {"exclude": ("*lora_*",)}, "16x"),
    "torch_compile_layer": (compiled_cnn, "image", F.cross_entropy, {}, "16x"),
    "torch_compile_channel": (compiled_cnn, "image", F.cross_entropy, {"granularity": "channel"}, "16x"),
    "bare_parameter_model_target": (BareParameter, "vector", F.cross_entropy, {"params": ("w",)}, "16x:model"),
    "per_pixel_loss_segmenter": (Segmenter, "pixels", F.cross_entropy, {}, "16x"),
    "regression_loss_mlp": (regression_mlp, "regress", _mse, {}, "16x"),
}


def _score(model, x, y, loss_fn) -> dict:
    with torch.no_grad():
        out = model.eval()(x)
        right, counted = correct_count(out, y)
        row = {"loss": round(float(loss_fn(out, y)), 5)}
        if counted:
            row["accuracy"] = round(right / counted, 4)
        return row


def run_one(name: str, steps: int, workdir: Path) -> dict:
    build, task, loss_fn, prep, target = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x, y = data_for(task, 1024, seed=1)
    xt, yt = data_for(task, 256, seed=2)
    loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    t0 = time.time()
    step = 0
    while step < steps:  # the float model
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    float_score = _score(model, xt, yt, loss_fn)
    frozen_before = [n for n, p in model.named_parameters() if not p.requires_grad]
    space = prepare_(model, PrepareConfig(**prep))
    cost = space.cost
    ctx = AllocationContext(model=model, space=space, loaders={"weights": loader, "held_out": loader},
                            budget_bits=budget_bits(target, cost), target=target, epochs=1, seed=0,
                            device=torch.device("cpu"), loss_fn=loss_fn)
    alloc = allocate("hessian", ctx)
    bits = cost.normalize(alloc.bits)
    space.fix_(bits)
    derived_score = _score(model, xt, yt, loss_fn)
    finetune_(model, space, bits, loader, TrainConfig(epochs=1, lr=0.01, amp=False), loss_fn=loss_fn)
    final_score = _score(model, xt, yt, loss_fn)
    frozen_after = [n for n, p in model.named_parameters() if not p.requires_grad]
    path = workdir / f"{name}.mbits"
    result = export_model(model, space, path)
    with torch.no_grad():  # the module itself (a compiled model's kernels round on their own, see below)
        out = unwrap_compiled(model).eval()(xt)
        compiled_out = model.eval()(xt)
    torch.save({"x": xt, "out": out, "compiled_out": compiled_out}, workdir / f"{name}.pt")
    child = subprocess.run([sys.executable, __file__, "reload", name, str(path), str(workdir / f"{name}.pt")],
                           capture_output=True, text=True, check=True, timeout=600)
    reload = json.loads(child.stdout.strip().splitlines()[-1])
    s = cost.summary(bits)
    return {**stamp(), "model": name, "task": task, "loss_fn": getattr(loss_fn, "__name__", str(loss_fn)),
            "prepare": {k: list(v) if isinstance(v, tuple) else v for k, v in prep.items()}, "target": target,
            "params": cost.num_params, "quantized_share": round(cost.num_quantized_weights / cost.num_params, 4),
            "kinds": sorted({layer.kind for layer in space.layers}),
            "weight_compression": round(s["weight_compression"], 2), "model_compression": round(s["model_compression"], 2),
            "file_bytes": result.file_bytes, "file_compression": round(result.file_compression, 2),
            "float": float_score, "derived": derived_score, "finetuned": final_score,
            "frozen_kept_frozen": frozen_before == frozen_after and bool(frozen_before) or None,
            "reload_max_abs_diff": reload["max_abs_diff"], "reload_fresh_process": True,
            **({"reload_compiled_max_abs_diff": reload["compiled_max_abs_diff"]} if model is not unwrap_compiled(model)
               else {}),
            "seconds": round(time.time() - t0, 1)}


def reload_main(name: str, path: str, ref: str) -> None:
    """In a fresh process: build the model as the user does, load the file into it, compare outputs."""
    torch.set_num_threads(1)
    model = MODELS[name][0]()
    loaded = mixbits.load(path, model)
    saved = torch.load(ref, weights_only=True)
    with torch.no_grad():
        out = unwrap_compiled(loaded)(saved["x"])
        compiled = loaded(saved["x"])  # a compiled model: freshly compiled kernels in this process
    print(json.dumps({"max_abs_diff": float((out - saved["out"]).abs().max()),
                      "compiled_max_abs_diff": float((compiled - saved["compiled_out"]).abs().max())}))


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    names = args.only or list(MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, args.steps, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "reload":
    reload_main(*sys.argv[2:5])
