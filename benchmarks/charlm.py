"""A small character-level transformer LM on Python source, for benchmarks that need a language model.

- The corpus: the ``.py`` files of a fixed list of Python standard-library packages (the
  interpreter's own source, no download), in sorted path order. Each FILE goes to one split by
  a hash of its path relative to the stdlib (1 in 20 test, 1 in 20 held-out, the rest train), so
  no text is shared between the splits. Characters map to 97 tokens (printable ASCII, newline,
  one "other"). The corpus depends on the interpreter's version: the checkpoint records the
  version and the sha256 of every split's text, and :func:`build_corpus` refuses another one.
- Windows: ``context + 1`` characters, input the first ``context``, target the last ``context``.
  Held-out and test are fixed non-overlapping windows from the start of their text; the
  fine-tuning "epoch" is a fixed set of windows spread evenly over the training text (the float
  training itself samples random windows of all of it).
- The model: a pre-norm causal transformer (token embedding tied to the head, learned positions,
  per block one ``qkv`` and one ``proj`` Linear for attention and ``fc1``/``fc2`` for the MLP). Its
  logits come out as (B, V, T) for targets (B, T): the class dimension is dim 1, the layout
  ``F.cross_entropy``, :func:`mixbits.train.correct_count` and the held-out scorer expect.

Train the float checkpoint (one thread):

    OMP_NUM_THREADS=1 python benchmarks/charlm.py train --out benchmarks/checkpoints/charlm_py_s3000.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VOCAB", "CharLMConfig", "CharLM", "Corpus", "Batches", "build_corpus", "encode", "windows",
           "spread_windows", "perplexity", "load_checkpoint", "loaders"]

VOCAB = 97  # printable ASCII 32..126 -> 0..94, newline -> 95, anything else -> 96
STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ("asyncio", "concurrent", "email", "encodings", "html", "http", "importlib", "json", "logging",
            "multiprocessing", "sqlite3", "unittest", "urllib", "wsgiref", "xml", "xmlrpc", "zoneinfo")
SPLITS = ("train", "held_out", "test")


def encode(text: str) -> torch.Tensor:
    """Token ids (n,) of ``text``."""
    codes = torch.tensor(list(text.encode("ascii", "replace")), dtype=torch.long)
    return torch.where(codes == 10, 95, torch.where((codes >= 32) & (codes < 127), codes - 32, 96))


def split_of(relative_path: str) -> str:
    """The split a file belongs to, from a hash of its path (stable across machines and runs)."""
    h = int(hashlib.sha256(relative_path.encode()).hexdigest(), 16) % 20
    return "test" if h == 0 else "held_out" if h == 1 else "train"


@dataclass(frozen=True)
class Corpus:
    """The three splits' tokens and how they were made."""

    train: torch.Tensor
    held_out: torch.Tensor
    test: torch.Tensor
    files: dict[str, list[str]]
    sha256: dict[str, str]
    python: str

    def describe(self) -> dict:
        return {"packages": list(PACKAGES), "python": self.python, "sha256": self.sha256,
                "files": {k: len(v) for k, v in self.files.items()},
                "characters": {k: int(getattr(self, k).numel()) for k in SPLITS}}


def build_corpus(expect: dict | None = None) -> Corpus:
    """Read the corpus from this interpreter's stdlib.

    Args:
        expect: a checkpoint's ``corpus`` record; the splits' sha256 must match it.

    Raises:
        RuntimeError: the stdlib's text differs from the one the checkpoint was trained on.
    """
    files: dict[str, list[str]] = {k: [] for k in SPLITS}
    texts: dict[str, list[str]] = {k: [] for k in SPLITS}
    for pkg in PACKAGES:
        for f in sorted((STDLIB / pkg).rglob("*.py")):
            rel = f.relative_to(STDLIB).as_posix()
            if "/test" in rel or "/tests/" in rel:  # test data files: keep the corpus to library code
                continue
            split = split_of(rel)
            files[split].append(rel)
            texts[split].append(f.read_text(errors="replace"))
    joined = {k: "".join(v) for k, v in texts.items()}
    sha = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in joined.items()}
    python = ".".join(map(str, sys.version_info[:3]))
    if expect is not None and expect.get("sha256") != sha:
        raise RuntimeError(f"the stdlib text of this Python ({python}, {STDLIB}) differs from the corpus the "
                           f"checkpoint was trained on (Python {expect.get('python')}): use that Python version")
    return Corpus(encode(joined["train"]), encode(joined["held_out"]), encode(joined["test"]), files, sha, python)


def windows(tokens: torch.Tensor, context: int, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (x, y) windows from the start of ``tokens``: x (N, context), y (N, context) shifted by one."""
    n = (tokens.numel() - 1) // context
    if count is not None:
        if count > n:
            raise ValueError(f"{count} windows of {context} asked from {tokens.numel()} tokens ({n} fit)")
        n = count
    x = tokens[:n * context].reshape(n, context)
    y = tokens[1:n * context + 1].reshape(n, context)
    return x.clone(), y.clone()


def spread_windows(tokens: torch.Tensor, context: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` (x, y) windows starting at evenly spaced offsets over all of ``tokens``."""
    starts = torch.linspace(0, tokens.numel() - context - 2, count).long()
    idx = starts[:, None] + torch.arange(context + 1)
    w = tokens[idx]
    return w[:, :-1].clone(), w[:, 1:].clone()


class Batches:
    """(x, y) batches of fixed windows, reshuffled every epoch from a seeded generator (or in order).

    Args:
        x, y: (N, T) token windows.
        batch_size: windows per batch.
        shuffle: reshuffle every pass.
        seed: the shuffling generator's seed.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


@dataclass(frozen=True, kw_only=True)
class CharLMConfig:
    """The model's shape."""

    vocab: int = VOCAB
    d: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 64


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x GELU MLP, both residual."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, d/heads)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class CharLM(nn.Module):
    """Causal character LM: tokens (B, T) -> logits (B, V, T)."""

    def __init__(self, config: CharLMConfig = CharLMConfig()) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab, config.d)
        self.pos = nn.Parameter(torch.randn(config.context, config.d) * 0.02)
        self.blocks = nn.ModuleList(Block(config.d, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d)
        self.head = nn.Linear(config.d, config.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied: one tensor, one bitwidth
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos[:t]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)).transpose(1, 2)  # (B, V, T)


@torch.no_grad()
def perplexity(model: nn.Module, loader) -> float:
    """exp(mean per-token cross-entropy) of ``model`` on ``loader`` (eval mode, training flag restored)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in loader:
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        n += y.numel()
    model.train(was)
    return math.exp(total / n)


@dataclass(frozen=True, kw_only=True)
class Splits:
    """Window counts of the fixed sets."""

    finetune: int = 1024
    held_out: int = 128
    test: int = 512


def loaders(corpus: Corpus, context: int, *, seed: int, splits: Splits = Splits(), batch_size: int = 32
            ) -> dict[str, Batches]:
    """{"train": the fine-tuning windows, shuffled by ``seed``; "held_out"; "test"} (fixed windows)."""
    return {"train": Batches(*spread_windows(corpus.train, context, splits.finetune), batch_size=batch_size,
                             shuffle=True, seed=seed),
            "held_out": Batches(*windows(corpus.held_out, context, splits.held_out), batch_size=batch_size),
            "test": Batches(*windows(corpus.test, context, splits.test), batch_size=128)}


def load_checkpoint(path: str | Path) -> tuple[CharLM, dict]:
    """(the float model with the checkpoint's weights, the checkpoint record without the weights).

    Raises:
        ValueError: the file is not a charlm checkpoint.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("model") != "charlm":
        raise ValueError(f"{path} is not a charlm checkpoint (written by `python benchmarks/charlm.py train`)")
    model = CharLM(CharLMConfig(**ckpt["model_kwargs"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


def train(args: argparse.Namespace) -> None:
    """Train the float LM with AdamW on random training windows; write the checkpoint and its record."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _provenance import command_line, describe, stamp

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = CharLMConfig(d=args.d, layers=args.layers, heads=args.heads, context=args.context)
    corpus = build_corpus()
    model = CharLM(config)
    sets = loaders(corpus, config.context, seed=args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() > 1 and n != "pos")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (args.steps - warm))))
    gen = torch.Generator().manual_seed(args.seed)
    span = torch.arange(config.context + 1)
    t0 = time.perf_counter()
    history = []
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, corpus.train.numel() - config.context - 1, (args.batch_size,), generator=gen)
        w = corpus.train[starts[:, None] + span]
        loss = F.cross_entropy(model(w[:, :-1]), w[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            ho = perplexity(model, sets["held_out"])
            history.append({"step": step + 1, "train_loss": round(float(loss), 4), "held_out_perplexity": round(ho, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(history[-1]), flush=True)
    seconds = time.perf_counter() - t0
    held_out, test = perplexity(model, sets["held_out"]), perplexity(model, sets["test"])
    record = {"model": "charlm", "model_kwargs": asdict(config), "corpus": corpus.describe(),
              "held_out_perplexity": held_out, "test_perplexity": test, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({**record, "state_dict": model.state_dict()}, tmp)
    tmp.replace(out)
    meta = {**record, "recipe": f"AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), lr {args.lr}, "
                                f"{warm} warm-up steps then cosine to 0, batch {args.batch_size} random windows, "
                                "gradient clip 1.0",
            "seconds": round(seconds, 1), "history": history, "command": command_line(), **stamp(),
            "machine": describe(), "threads": torch.get_num_threads(),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    rec = out.with_name(out.stem + "_train.json")
    rec.with_suffix(".tmp").write_text(json.dumps(meta, indent=1) + "\n")
    rec.with_suffix(".tmp").replace(rec)
    print(json.dumps({k: meta[k] for k in ("held_out_perplexity", "test_perplexity", "seconds", "sha256")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the float checkpoint")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--d", type=int, default=128)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--context", type=int, default=64)
    args = p.parse_args()
    if args.command == "train":
        train(args)


if __name__ == "__main__":
    main()
