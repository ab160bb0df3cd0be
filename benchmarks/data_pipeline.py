"""Training images/s of ResNet-20 with mixbits' device-resident pipeline vs a per-sample DataLoader.

Both pipelines feed the same model the same kind of batches (CIFAR-10 32x32 uint8
images, random crop with 4-pixel padding, horizontal flip, normalisation):

- ``tensor``: :class:`mixbits.data.TensorLoader`, the data set on the device as one
  uint8 tensor, augmentation done on whole batches (no per-sample Python);
- ``dataloader``: the usual recipe, a ``torch.utils.data.Dataset`` holding HWC uint8
  arrays (as torchvision's CIFAR10 does) that crops, flips and normalises one sample
  at a time (what torchvision's RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor +
  Normalize do), batched by a ``DataLoader`` with worker processes.

Each measurement times ``--batches`` full training steps (forward, backward, SGD
update, data included) after ``--warmup`` steps; the two pipelines alternate for
``--rounds`` rounds so background load hits both alike, and the median is reported.
The loader-only rate (batches produced with no model) is measured the same way.

    python benchmarks/data_pipeline.py                                  # quick, CPU, synthetic images
    python benchmarks/data_pipeline.py --data-root ../shared/data/cifar10-jpeg.zip
    python benchmarks/data_pipeline.py --device cuda --batches 200 --rounds 3 --data-root ...
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script
import torch.nn.functional as F

from mixbits.data import TensorLoader
from mixbits.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from mixbits.models import create_model
from mixbits.pipeline import resolve_device


class PerSampleCifar(torch.utils.data.Dataset):
    """HWC uint8 images, augmented one sample at a time (the standard torchvision-style recipe)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, pad: int = 4) -> None:
        self.images, self.labels, self.pad = images_hwc, labels, pad
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        h, w = x.shape[1:]
        x = F.pad(x, (self.pad,) * 4)  # (3, H+2p, W+2p)
        dy, dx = np.random.randint(0, 2 * self.pad + 1, 2)
        x = x[:, dy:dy + h, dx:dx + w]
        if np.random.rand() < 0.5:
            x = x.flip(2)
        return (x - self.mean) / self.std, int(self.labels[i])


def _images(root: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if root:
        from mixbits.data import load_dataset

        ds = load_dataset("cifar10", root=root)
        idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))[:n]
        return ds.train_x[idx], ds.train_y[idx], f"CIFAR-10 ({root}), {n} training images"
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g), f"synthetic uint8 3x32x32, {n} images")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(batches_iter, n: int, warmup: int, step, device: torch.device) -> float:
    """Images/s over ``n`` batches after ``warmup`` batches; ``step(x, y)`` is applied to each."""
    it = iter(batches_iter)
    for _ in range(warmup):
        step(*next(it))
    _sync(device)
    t0, seen = time.perf_counter(), 0
    for _ in range(n):
        x, y = next(it)
        step(x, y)
        seen += y.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _cpu_ms_per_batch(loader, n: int, warmup: int) -> float:
    """CPU time (this process, all threads) per batch produced; insensitive to other jobs' load."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.process_time()
    for _ in range(n):
        next(it)
    return 1000 * (time.process_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", help="CIFAR-10 folder or zip (default: synthetic images)")
    ap.add_argument("--images", type=int, default=5000, help="training images held by both pipelines")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6, help="timed training steps per measurement (quick default)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loader-batches", type=int, default=30,
                    help="timed batches of the loader-only measurement (enough to drain the workers' prefetch)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median is reported")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    x, y, source = _images(args.data_root, args.images)
    need = (max(args.batches, args.loader_batches) + args.warmup) * args.batch_size
    if need > len(y):
        raise SystemExit(f"--images {len(y)} is fewer than the {need} images that warmup + batches consume")
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=3, num_classes=10, input_size=32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def train_step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def no_step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        xb.to(device, non_blocking=True)

    def make(kind: str, r: int):
        if kind == "tensor":
            return TensorLoader(x, y, batch_size=args.batch_size, shuffle=True, augment="crop_flip",
                                mean=CIFAR10_MEAN, std=CIFAR10_STD, drop_last=True, seed=r, device=device)
        ds = PerSampleCifar(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy())
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                           num_workers=args.workers, pin_memory=device.type == "cuda",
                                           generator=torch.Generator().manual_seed(r))

    model.train()
    rates: dict[str, dict[str, list[float]]] = {k: {"train": [], "loader_only": []} for k in ("tensor", "dataloader")}
    for r in range(args.rounds):
        for kind in ("tensor", "dataloader"):
            rates[kind]["train"].append(_time(make(kind, r), args.batches, args.warmup, train_step, device))
            rates[kind]["loader_only"].append(_time(make(kind, r), args.loader_batches, args.warmup, no_step, device))
    # CPU cost of producing a batch, in-process for both (DataLoader without workers), so that the
    # figure does not depend on how busy the machine is.
    workers = args.workers
    args.workers = 0
    cpu_ms = {kind: _cpu_ms_per_batch(make(kind, 0), args.loader_batches, args.warmup) for kind in ("tensor", "dataloader")}
    args.workers = workers
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rates.items()}
    result = {
        "benchmark": "data_pipeline", "model": "resnet20", "data": source, "device": str(device),
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "batches": args.batches,
        "loader_batches": args.loader_batches, "warmup": args.warmup, "rounds": args.rounds, "workers": args.workers,
        "images_per_s": med, "all_rounds": rates,
        "train_ratio_tensor_over_dataloader": med["tensor"]["train"] / med["dataloader"]["train"],
        "loader_only_ratio_tensor_over_dataloader": med["tensor"]["loader_only"] / med["dataloader"]["loader_only"],
        "loader_cpu_ms_per_batch_in_process": cpu_ms,
        "torch": torch.__version__, "python": platform.python_version(),
        **stamp(),
    }
    print(f"ResNet-20, {source}, batch {args.batch_size}, {args.batches} timed steps x {args.rounds} rounds on "
          f"{device} ({torch.get_num_threads()} threads); DataLoader with {args.workers} workers")
    print(f"{'pipeline':<34}{'train images/s':>16}{'loader-only images/s':>22}")
    for kind, label in (("tensor", "TensorLoader (device, whole-batch)"), ("dataloader", "DataLoader (per-sample)")):
        print(f"{label:<34}{med[kind]['train']:>16.1f}{med[kind]['loader_only']:>22.1f}")
    print(f"ratio TensorLoader / DataLoader: training {result['train_ratio_tensor_over_dataloader']:.2f}x, "
          f"loader only {result['loader_only_ratio_tensor_over_dataloader']:.2f}x")
    print(f"CPU time to produce one batch in-process: TensorLoader {cpu_ms['tensor']:.1f} ms, "
          f"per-sample Dataset {cpu_ms['dataloader']:.1f} ms ({cpu_ms['dataloader'] / cpu_ms['tensor']:.1f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
