"""Every weight of modern models: transformers and a character-level GPT on local text.

Data: the Python standard library's own source files (every machine with Python has them).

    python benchmarks/every_weight.py classifier   # (a) transformer classifier: which stdlib package a snippet is from
    python benchmarks/every_weight.py charlm       # (b) GPT-style character LM, test perplexity float vs 16x/24x
    python benchmarks/every_weight.py hf           # (c) Hugging Face GPT-2 built from a small config
    python benchmarks/every_weight.py step         # search step vs float step on a ~10M-parameter GPT
    python benchmarks/every_weight.py kinds        # (d) issue 19: ten architectures the tests never saw
                                                   #     (benchmarks/every_kind.py), hessian at 16x each

Each prints one JSON line: share of parameters quantized, weight and whole-model compression,
float vs final accuracy or perplexity, and the export/load identity (max |difference| of outputs).
The float model is trained here with Adam; search and fine-tuning are mixbits' own.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mixbits
from mixbits.export import export_model
from mixbits.finetune import finetune_
from mixbits.search import SearchConfig, search
from mixbits.space import PrepareConfig, prepare_
from mixbits.train import TrainConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 97  # printable ASCII 32..126, newline, and one "other"


def encode(text: str) -> torch.Tensor:
    codes = torch.tensor(list(text.encode("ascii", "replace")), dtype=torch.long)
    return torch.where(codes == 10, 95, torch.where((codes >= 32) & (codes < 127), codes - 32, 96))  # (n,)


def package_text(pkg: str, limit: int) -> str:
    files = sorted((STDLIB / pkg).rglob("*.py"))
    return "".join(f.read_text(errors="replace") for f in files)[:limit]


class GPT(nn.Module):
    """Pre-norm causal transformer; token embedding tied to the head; learned positions (a named parameter)."""

    def __init__(self, d=128, layers=2, heads=4, t=128, classes: int | None = None):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(t, d) * 0.02)
        self.blocks = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True), layers,
            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.causal = classes is None
        self.head = nn.Linear(d, classes or VOCAB, bias=False)
        if classes is None:
            self.head.weight = self.tok.weight

    def forward(self, x):  # x: (B, T) int
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device) if self.causal else None
        h = self.norm(self.blocks(self.tok(x) + self.pos[:t], mask=mask, is_causal=self.causal))  # (B, T, d)
        if not self.causal:
            return self.head(h.mean(1))  # (B, classes)
        return self.head(h).reshape(-1, VOCAB)  # (B*T, V)


def adam_train(model, batches, steps, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return loss.item()


@torch.no_grad()
def metric(model, batches, lm: bool) -> float:
    model.eval()
    tot, n = 0.0, 0
    for x, y in batches:
        out = model(x)
        if lm:
            tot += float(F.cross_entropy(out, y, reduction="sum"))
        else:
            tot += float((out.argmax(1) == y).sum())
        n += y.numel()
    return math.exp(tot / n) if lm else tot / n


def compress(model, batches_w, batches_h, batches_ft, target, lm, epochs=2, ft_epochs=1):
    """prepare -> search -> finetune -> export -> load; returns the figures."""
    teacher = copy.deepcopy(model).eval()
    m = copy.deepcopy(model)
    space = prepare_(m, PrepareConfig(params=("pos",) if hasattr(m, "pos") else (), target=target))
    t0 = time.time()
    res = search(m, space, batches_w, batches_h, SearchConfig(target=target, epochs=epochs, distill_weight=0.5),
                 teacher=teacher)
    finetune_(m, space, res.bits, batches_ft, TrainConfig(epochs=ft_epochs, lr=0.01, weight_decay=0.0,
                                                            distill_weight=0.5), teacher=teacher)
    seconds = time.time() - t0
    s = space.cost.summary(res.bits)
    with tempfile.TemporaryDirectory() as tmp:
        ex = export_model(m, space, Path(tmp) / "m.mbits")
        loaded = mixbits.load(Path(tmp) / "m.mbits", model=copy.deepcopy(model))
        x = batches_h[0][0]
        m.eval()
        with torch.no_grad():
            diff = float((loaded(x) - m(x)).abs().max())
    return {"target": target, "bits": res.bits, "quantized_param_share": round(s["quantized_param_share"], 4),
            "weight_compression": round(s["weight_compression"], 2), "model_compression": round(s["model_compression"], 2),
            "file_compression": round(ex.file_compression, 2), "file_bytes": ex.file_bytes,
            "final": metric(m, TEST, lm), "load_max_abs_diff": diff, "search_finetune_s": round(seconds, 1)}


TEST: list = []


def lm_batches(codes, t, b, n, g):
    starts = torch.randint(0, len(codes) - t - 1, (n, b), generator=g)
    return [(torch.stack([codes[s:s + t] for s in row]), torch.stack([codes[s + 1:s + t + 1] for s in row]).reshape(-1))
            for row in starts]


def run_charlm(args):
    global TEST
    g = torch.Generator().manual_seed(0)
    text = package_text("email", 1_200_000) + package_text("json", 200_000)
    codes = encode(text)
    cut = int(0.9 * len(codes))
    train, test = codes[:cut], codes[cut:]
    t = 128
    batches = lm_batches(train, t, 32, 400, g)
    TEST = lm_batches(test, t, 32, 12, g)
    model = GPT(d=128, layers=2, t=t)
    return train_and_compress(model, batches, args, lm=True, task="charlm", train_chars=len(train),
                              test_chars=len(test))


def train_and_compress(model, batches, args, *, lm: bool, **fields):
    """Train the float model, then compress it at every target: the record of one task."""
    t0 = time.time()
    adam_train(model, batches, args.steps)
    out = {**fields, "params": sum(p.numel() for p in model.parameters()), "float_train_s": round(time.time() - t0, 1),
           ("float_perplexity" if lm else "float_accuracy"): metric(model, TEST, lm), "runs": []}
    for target in args.targets:
        r = compress(model, batches[:30], batches[30:50], batches[50:90], target, lm)
        out["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "bits"}), file=sys.stderr)
    return out


def run_classifier(args):
    global TEST
    g = torch.Generator().manual_seed(0)
    pkgs = ["email", "json", "asyncio", "unittest"]
    t = 64
    tr, te = [], []
    for label, pkg in enumerate(pkgs):
        codes = encode(package_text(pkg, 400_000))
        cut = int(0.8 * len(codes))
        for part, n, dst in ((codes[:cut], 2000, tr), (codes[cut:], 500, te)):
            starts = torch.randint(0, len(part) - t, (n,), generator=g)
            dst += [(part[s:s + t], label) for s in starts.tolist()]
    def batch(rows, b):
        perm = torch.randperm(len(rows), generator=g).tolist()
        return [(torch.stack([rows[i][0] for i in perm[k:k + b]]), torch.tensor([rows[i][1] for i in perm[k:k + b]]))
                for k in range(0, len(rows) - b + 1, b)]
    batches, TEST = batch(tr, 64), batch(te, 100)
    model = GPT(d=128, layers=2, t=t, classes=len(pkgs))
    return train_and_compress(model, batches, args, lm=False, task="classifier", classes=pkgs, train=len(tr),
                              test=len(te))


class HFLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        from transformers import GPT2LMHeadModel

        self.m = GPT2LMHeadModel(config)

    def forward(self, x):  # x: (B, T) -> (B*T, V)
        return self.m(input_ids=x).logits.reshape(-1, self.m.config.vocab_size)


def run_hf(args):
    global TEST
    import transformers
    from transformers import GPT2Config

    g = torch.Generator().manual_seed(0)
    codes = encode(package_text("json", 300_000))
    cut = int(0.9 * len(codes))
    t = 64
    batches = lm_batches(codes[:cut], t, 16, 200, g)
    TEST = lm_batches(codes[cut:], t, 16, 8, g)
    config = GPT2Config(vocab_size=VOCAB, n_positions=t, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = HFLM(config)
    return train_and_compress(model, batches, args, lm=True, task="hf_gpt2", transformers=transformers.__version__,
                              config=config.to_diff_dict())


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_step(args):
    """One mode per process (peak RSS is per process): float or search steps on a ~10M-parameter GPT."""
    torch.manual_seed(0)
    t, b = 128, args.batch
    model = GPT(d=384, layers=6, heads=6, t=t)
    x = torch.randint(0, VOCAB, (b, t))
    y = torch.randint(0, VOCAB, (b * t,))
    params = sum(p.numel() for p in model.parameters())
    if args.mode == "search":
        space = prepare_(model, PrepareConfig(params=("pos",)))
        space.project_(space.cost.float_quantized_bits() // 16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    rss0 = _rss_mib()
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": args.mode, "params": params, "batch": b, "seq": t, "threads": torch.get_num_threads(),
            "step_s_mean": round(sum(times[1:]) / len(times[1:]), 3), "step_s_median": round(sorted(times[1:])[len(times[1:]) // 2], 3),
            "rss_before_steps_mib": round(rss0, 1),
            "peak_rss_mib": round(peak, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=["classifier", "charlm", "hf", "step", "kinds"])
    p.add_argument("--only", nargs="+", help="kinds: run only these models (names in benchmarks/every_kind.py)")
    p.add_argument("--targets", nargs="+", default=["16x", "24x"])
    p.add_argument("--steps", type=int, default=600, help="training steps; for 'step', timed steps (16 = one clip refresh)")
    p.add_argument("--mode", choices=["float", "search"], default="float")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    if args.task == "kinds":  # one JSON line per model, printed as each finishes
        import every_kind

        every_kind.run(args)
        return
    fn = {"classifier": run_classifier, "charlm": run_charlm, "hf": run_hf, "step": run_step}[args.task]
    print(json.dumps(fn(args)))


if __name__ == "__main__":
    main()
