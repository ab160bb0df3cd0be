"""Compare mixbits' search with uniform, Hessian, random, DiffQ and MCT allocations at equal budgets.

From one float checkpoint per model and the same fine-tuning epochs for every row:
float; uniform 1, 2, 4 and 8 bits; ``hessian``; ``random`` (3 seeds); ``search``;
DiffQ (its penalty bisected so its size, recomputed with mixbits' cost model from
its per-layer bits, lands at or under the budget; then fine-tuned like the
others); Sony MCT where it installs. Targets 8x, 16x, 24x, 28x weight compression.
Models: LeNet-5 on mnist5k, ResNet-20 on the CIFAR-10 zip.

    python benchmarks/compare_methods.py --cifar-root ../shared/data/cifar10-jpeg.zip          # quick, CPU
    python benchmarks/compare_methods.py --full --cifar-root ... --out benchmarks/results-full  # GPU

Writes into ``--out``: ``compare_<model>.csv/.json`` (every row), ``compare_methods.md``
(the table, the cost ratios, the command, commit and machine), ``compare_<model>.png``
(Pareto plots) and ``compare_command.txt``. Rows are appended to the JSON as they
finish, so a long run can be watched and a crash loses nothing done.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mixbits.methods import Allocation, AllocationContext
from mixbits.space import PrepareConfig, prepare_
from mixbits.sweep import SweepConfig, SweepSetup, plot_pareto, prepare_sweep, run_row, write_table

log = logging.getLogger("compare_methods")

TARGETS = ("8x", "16x", "24x", "28x")

# Quick: a shared 2-core CPU, about 45 minutes for both models. Full: a GPU, the real recipes.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {  # seconds: checks the wiring on scikit-learn digits
        "digits_cnn": dict(data="digits", float_epochs=2, search_epochs=2, finetune_epochs=1, batch_size=64,
                           float_lr=0.05, finetune_lr=0.01, search_seeds=(0,), random_seeds=(0, 1)),
    },
    "quick": {
        # LeNet-5 has no normalisation layers: fine-tuning at lr 0.01 sent uniform 2-bit to 73% and,
        # with the search's default weight_lr (0.02), two of three search seeds to 10%. Both lowered.
        "lenet5": dict(data="mnist5k", float_epochs=20, search_epochs=4, finetune_epochs=3, batch_size=128,
                       float_lr=0.05, finetune_lr=0.003, search_seeds=(0, 1, 2), random_seeds=(0, 1, 2),
                       hessian_seeds=(0, 1, 2),
                       search_options={"weight_lr": 0.005, "init": "hessian"}),
        "resnet20": dict(data="cifar10", train_subset=4000, test_subset=1000, float_epochs=20, search_epochs=2,
                         finetune_epochs=1, batch_size=128, float_lr=0.05, finetune_lr=0.01, search_seeds=(0, 1, 2),
                         random_seeds=(0, 1, 2), hessian_seeds=(0, 1, 2), search_options={"init": "hessian"}),
    },
    "full": {
        "lenet5": dict(data="mnist5k", float_epochs=30, search_epochs=10, finetune_epochs=10, batch_size=128,
                       float_lr=0.05, finetune_lr=0.01, search_seeds=(0, 1, 2), random_seeds=(0, 1, 2)),
        "resnet20": dict(data="cifar10", float_epochs=160, search_epochs=20, finetune_epochs=30, batch_size=128,
                         float_lr=0.1, finetune_lr=0.01, search_seeds=(0, 1, 2), random_seeds=(0, 1, 2)),
    },
}


# ---------------------------------------------------------------------------- DiffQ
class DiffQBaseline:
    """DiffQ (Defossez et al., 2021) as an allocator: one bitwidth per layer (``group_size=0``).

    DiffQ trains the weights with noise scaled by learnable bits per layer under
    ``loss = task + penalty * size / float size``. Its bits (rounded, 1..8: the
    integer quantizers mixbits stores) are sized with mixbits' cost model, and the
    penalty is bisected (log scale) to the smallest one whose size fits the budget.
    Runs are memoised by penalty, so the four targets share them. Each run starts
    from the float weights and trains ``epochs`` epochs, as long as the search.
    """

    def __init__(self, setup: SweepSetup, *, epochs: int, max_runs: int = 4, bits_lr: float = 0.2,
                 seed: int = 0) -> None:
        self.setup, self.epochs, self.max_runs, self.bits_lr, self.seed = setup, epochs, max_runs, bits_lr, seed
        self.memo: dict[float, tuple[dict[str, int], dict[str, torch.Tensor], int]] = {}
        self.min_bits, self.max_bits = 1, 8

    def _run(self, penalty: float, space) -> tuple[dict[str, int], dict[str, torch.Tensor], int]:
        if penalty in self.memo:
            return self.memo[penalty]
        from diffq import DiffQuantizer

        torch.manual_seed(self.seed)
        model = self.setup.new_model().train()
        names = [layer.name for layer in space.layers]
        quantized = {f"{n}.weight" for n in names}
        exclude = [n for n, _ in model.named_parameters() if n not in quantized]
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
        q = DiffQuantizer(model, min_size=0.0, group_size=0, min_bits=self.min_bits, max_bits=self.max_bits,
                          init_bits=4, exclude=exclude)
        q.no_optimizer()
        logits = {n[: -len(".weight_diffq")]: p for n, p in model.named_parameters() if n.endswith("_diffq")}
        b_opt = torch.optim.Adam(list(logits.values()), lr=self.bits_lr)
        float_mb = space.cost.float_quantized_bits() / 8 / 2**20
        loader = self.setup.loaders(self.seed)["full"]
        diverged = False
        for _ in range(self.epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                diverged = not (torch.isfinite(loss) and all(torch.isfinite(p).all() for p in logits.values()))
                if diverged:
                    break
                loss = loss + penalty * q.model_size() / float_mb
                opt.zero_grad(set_to_none=True)
                b_opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                b_opt.step()
            if diverged:
                break
        if diverged or not all(torch.isfinite(p).all() for p in model.parameters()):
            q.detach()
            log.warning("diffq penalty %.4g diverged; counted as not fitting", penalty)
            self.memo[penalty] = ({}, {}, 2**62)
            return self.memo[penalty]
        with torch.no_grad():
            bits = {}
            for n in names:
                t = torch.sigmoid(logits[n].detach()).item()
                bits[n] = int(min(self.max_bits, max(self.min_bits, round(self.min_bits + t * (self.max_bits - self.min_bits)))))
        q.detach()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        size = space.cost.quantized_bits(bits)
        log.info("diffq penalty %.4g -> %.2fx", penalty, space.cost.float_quantized_bits() / size)
        self.memo[penalty] = (bits, state, size)
        return self.memo[penalty]

    def __call__(self, ctx: AllocationContext) -> Allocation:
        budget, space = ctx.budget_bits, ctx.space
        runs_before = len(self.memo)
        fits = lambda p: self._run(p, space)[2] <= budget  # noqa: E731
        known = sorted(self.memo)
        lo = max([p for p in known if self.memo[p][2] > budget], default=None)
        hi = min([p for p in known if self.memo[p][2] <= budget], default=None)
        if hi is None:
            p = max(known, default=0.1)
            for _ in range(4):
                p *= 10
                if fits(p):
                    hi = p
                    break
                if lo is not None and self.memo[p][2] >= self.memo[lo][2]:
                    break  # saturated: more penalty does not shrink it in this many epochs
                lo = p
        if hi is not None and lo is None:
            p = hi
            for _ in range(2):
                p /= 10
                if not fits(p):
                    lo = p
                    break
                hi = p
        while hi is not None and lo is not None and len(self.memo) - runs_before < self.max_runs and hi / lo > 1.3:
            mid = math.sqrt(lo * hi)
            if fits(mid):
                hi = mid
            else:
                lo = mid
        if hi is None:
            raise RuntimeError(f"DiffQ did not reach the budget {budget} bits with penalties up to {p:g}")
        bits, state, _ = self.memo[hi]
        ctx.model.load_state_dict(state)  # hand over DiffQ's weights, as the search hands over its own
        return Allocation(bits=bits, info={"penalty": hi, "runs": {f"{k:.4g}": v[2] for k, v in self.memo.items()}})


# ---------------------------------------------------------------------------- MCT
MCT_NOTE = ("Sony MCT not run: model-compression-toolkit 2.6.1 asks pip to downgrade matplotlib (and, pinned, "
            "numpy) in this environment, and its PyTorch front end imports edge-mdt-cl, which needs torchvision; "
            "the torchvision wheel for torch 2.13.0 on PyPI is the CUDA build and does not load against the CPU "
            "torch (libtorch_cuda.so missing). Installing a CUDA torch (several GB) is out of scope here")


def mct_available() -> str | None:
    """None if Sony MCT imports, else why not."""
    try:
        import model_compression_toolkit  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------- cost ratios
def step_time_ratio(setup: SweepSetup, repeats: int = 4) -> dict[str, float]:
    """Median time of a search step (weight step and logit step) over a float training step, interleaved."""
    c = setup.config
    loader = setup.loaders(0)["weights"]
    x, y = next(iter(loader))
    float_model = setup.new_model().train()
    f_opt = torch.optim.SGD(float_model.parameters(), lr=1e-3, momentum=0.9)
    model = setup.new_model().train()
    space = prepare_(model, PrepareConfig(candidates=c.candidates))
    w_opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    a_opt = torch.optim.Adam(space.parameters(), lr=1e-3)
    budget = math.floor(space.cost.float_quantized_bits() / 16)
    times: dict[str, list[float]] = {"float": [], "weight": [], "logit": []}

    def timed(kind, fn):
        t0 = time.perf_counter()
        fn()
        times[kind].append(time.perf_counter() - t0)

    def float_step():
        loss = F.cross_entropy(float_model(x), y)
        f_opt.zero_grad()
        loss.backward()
        f_opt.step()

    def weight_step():
        loss = F.cross_entropy(model(x), y)
        w_opt.zero_grad()
        loss.backward()
        w_opt.step()

    def logit_step():
        space.project_(budget)
        loss = F.cross_entropy(model(x), y)
        a_opt.zero_grad()
        w_opt.zero_grad()
        loss.backward()
        a_opt.step()
        space.project_(budget)

    for i in range(repeats + 1):
        for kind, fn in (("float", float_step), ("weight", weight_step), ("float", float_step), ("logit", logit_step)):
            timed(kind, fn)
    med = {k: statistics.median(v[2:]) for k, v in times.items()}  # the first repeats are warm-up
    search_step = 0.5 * (med["weight"] + med["logit"])
    return {"float_step_s": med["float"], "search_weight_step_s": med["weight"], "search_logit_step_s": med["logit"],
            "search_step_over_float_step": search_step / med["float"]}


# ---------------------------------------------------------------------------- the benchmark
def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def run_model(name: str, prof: dict[str, Any], args, out: Path) -> dict[str, Any]:
    prof = dict(prof)
    search_seeds, random_seeds = prof.pop("search_seeds"), prof.pop("random_seeds")
    search_options = prof.pop("search_options", {})
    hessian_seeds = prof.pop("hessian_seeds", (0,))
    work = Path(args.work)
    ckpt = work / f"{name}_float.pt"
    config = SweepConfig(model=name, data_root=args.cifar_root if prof["data"] == "cifar10" else None,
                         targets=TARGETS, device=args.device, out=str(work), finetune_from=args.finetune_from,
                         checkpoint=str(ckpt) if ckpt.is_file() and not args.retrain else None, **prof)
    t0 = time.time()
    setup = prepare_sweep(config, progress=False)
    if config.checkpoint is None:
        from mixbits.runfiles import save_checkpoint

        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, {"model": name, "state_dict": setup.float_state, "test_accuracy": setup.float_accuracy})
    log.info("%s: float %.4f in %.1f s", name, setup.float_accuracy, time.time() - t0)
    result: dict[str, Any] = {"model": name, "data": config.data, "float_accuracy": setup.float_accuracy,
                              "finetune_from": config.finetune_from, "command": args.command,
                              "commit": _git_head(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "float_epoch_seconds": setup.float_epoch_seconds,
                              "float_steps_per_epoch": setup.float_steps_per_epoch,
                              "settings": {**prof, "search_seeds": list(search_seeds), "random_seeds": list(random_seeds),
                                           "hessian_seeds": list(hessian_seeds), "search_options": search_options},
                              "rows": [], "skipped": {}}
    result["cost"] = step_time_ratio(setup)
    result["rows"].append({"method": "float", "target": "-", "seed": 0, "size_bits": None, "quantized_bits": None,
                           "budget_bits": None, "weight_compression": 1.0, "model_compression": 1.0,
                           "average_bits": 32.0, "derived_accuracy": setup.float_accuracy,
                           "test_accuracy": setup.float_accuracy, "search_seconds": 0.0, "finetune_seconds": 0.0})
    wanted = set(args.methods)
    previous = out / f"compare_{name}.json"
    if args.append and previous.is_file():  # keep the saved rows of the methods not rerun now
        import json

        old = json.loads(previous.read_text())
        result["rows"] += [r for r in old["rows"] if r["method"] != "float" and r["method"].split(":")[0] not in wanted]
        result["skipped"].update({k: v for k, v in old.get("skipped", {}).items() if k.split("@")[0] not in wanted})
        result["command"] = old.get("command", args.command) + f"; then {args.command}"

    def save():
        write_table(result, out, stem=f"compare_{name}")

    def add(method, target, seed, **kw):
        t = time.time()
        try:
            row = run_row(setup, method, target, seed, **kw)
        except Exception as exc:  # noqa: BLE001 - a failing baseline is reported, not fatal
            log.exception("%s %s seed %s failed", method, target, seed)
            result["skipped"][f"{method}@{target}/{seed}"] = f"{type(exc).__name__}: {exc}"
            save()
            return
        result["rows"].append(row)
        save()
        print(f"[{name}] {method:>10} {row['target']:>5} seed {seed}: {row['weight_compression']:6.2f}x "
              f"test {100 * row['test_accuracy']:.2f}%  ({time.time() - t:.0f} s)", flush=True)

    if "uniform" in wanted:
        for k in (1, 2, 4, 8):
            add(f"uniform:{k}", None, 0)
    diffq = None
    if "diffq" in wanted:
        try:
            import diffq  # noqa: F401

            diffq = DiffQBaseline(setup, epochs=config.search_epochs)
        except ImportError as exc:
            result["skipped"]["diffq"] = f"not installed ({exc}); pip install 'mixbits[bench]'"
    if "mct" in wanted:
        why = mct_available()
        result["skipped"]["mct"] = MCT_NOTE + (f" (here: {why})" if why else "")
    for target in TARGETS:
        if "hessian" in wanted:
            for s in hessian_seeds:  # the Hutchinson probes and the fine-tuning follow the seed
                add("hessian", target, s)
        if "random" in wanted:
            for s in random_seeds:
                add("random", target, s)
        if diffq is not None:
            add("diffq", target, 0, allocator=diffq)
        if "search" in wanted:
            for s in search_seeds:
                add("search", target, s, options=search_options)
    search_rows = [r for r in result["rows"] if r["method"] == "search"]
    if search_rows:
        result["cost"]["search_seconds_mean"] = statistics.fmean(r["search_seconds"] for r in search_rows)
        result["cost"]["search_over_float_epoch"] = result["cost"]["search_seconds_mean"] / setup.float_epoch_seconds
    result["seconds"] = time.time() - t0
    save()
    plot_pareto([r for r in result["rows"] if r["method"] != "float"], out / f"compare_{name}.png",
                float_accuracy=setup.float_accuracy, title=f"{name} on {config.data} ({args.mode} mode)")
    return result


def _cell(rows: list[dict]) -> str:
    accs = [100 * r["test_accuracy"] for r in rows]
    comp = statistics.fmean(r["weight_compression"] for r in rows)
    if len(accs) > 1:
        return f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f} ({comp:.1f}x)"
    return f"{accs[0]:.2f} ({comp:.1f}x)"


def verdict(result: dict[str, Any]) -> list[str]:
    """Is search at least as accurate as every other method at every target >= 16x (means over seeds)?"""
    rows = result["rows"]
    lines = []
    for target in TARGETS:
        if float(target[:-1]) < 16:
            continue
        s = [r["test_accuracy"] for r in rows if r["method"] == "search" and r["target"] == target]
        if not s:
            continue
        ms = statistics.fmean(s)
        others = {}
        for method in ("hessian", "random", "diffq", "mct"):
            v = [r["test_accuracy"] for r in rows if r["method"] == method and r["target"] == target]
            if v:
                others[method] = statistics.fmean(v)
        uni = [r for r in rows if r["method"].startswith("uniform:") and r["weight_compression"] >= float(target[:-1])]
        if uni:
            best_u = max(uni, key=lambda r: r["average_bits"])
            others[f"uniform {best_u['method'][8:]}-bit"] = best_u["test_accuracy"]
        losers = {k: v for k, v in others.items() if v > ms}
        status = "search wins or ties" if not losers else "search loses to " + ", ".join(
            f"{k} ({100 * v:.2f})" for k, v in losers.items())
        lines.append(f"- {result['model']} {target}: search {100 * ms:.2f}; {status}")
    return lines


def write_markdown(results: list[dict], out: Path, command: str, mode: str) -> None:
    lines = ["# mixbits against other allocations at equal budgets", "",
             *[f"Command ({r['model']}): `{r.get('command', command)}` at commit `{r.get('commit', _git_head())}`, "
               f"{r.get('started', '')}  " for r in results],
             f"Machine: 2-core CPU container, no GPU ({platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}; cores shared with other jobs)  ",
             f"Mode: {mode}. Fine-tuning starts from: {results[0]['finetune_from'] if results else '-'} weights " + ("(the search and DiffQ hand over the weights they trained, the other rows start from the float checkpoint)" if results and results[0]['finetune_from'] == 'method' else "(every row starts from the float checkpoint)"), ""]
    for res in results:
        st = res["settings"]
        lines += [f"## {res['model']} on {res['data']}", "",
                  f"Float test accuracy {100 * res['float_accuracy']:.2f}%. Settings: " +
                  ", ".join(f"{k}={v}" for k, v in st.items()) + ". Test accuracy in %, mean ± std over seeds, "
                  "(weight compression).", ""]
        head = "| method | " + " | ".join(TARGETS) + " |"
        lines += [head, "|---|" + "---|" * len(TARGETS)]
        rows = res["rows"]
        for k in (1, 2, 4, 8):
            rr = [r for r in rows if r["method"] == f"uniform:{k}"]
            if rr:
                lines.append(f"| uniform {k}-bit | {_cell(rr)} (one point, any target) |" + " |" * (len(TARGETS) - 1))
        for method in ("hessian", "random", "diffq", "mct", "search"):
            cells = []
            for t in TARGETS:
                rr = [r for r in rows if r["method"] == method and r["target"] == t]
                cells.append(_cell(rr) if rr else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        c = res.get("cost", {})
        lines += ["", f"Search step / float step (interleaved, median): {c.get('search_step_over_float_step', float('nan')):.2f}x "
                      f"(float {1000 * c.get('float_step_s', float('nan')):.0f} ms, search weight step "
                      f"{1000 * c.get('search_weight_step_s', float('nan')):.0f} ms, logit step "
                      f"{1000 * c.get('search_logit_step_s', float('nan')):.0f} ms).  ",
                  f"Search wall time / one float epoch: {c.get('search_over_float_epoch', float('nan')):.2f} "
                  f"({c.get('search_seconds_mean', float('nan')):.1f} s / {res['float_epoch_seconds']:.1f} s).", ""]
        if res["skipped"]:
            lines += ["Not run:", ""] + [f"- {k}: {v}" for k, v in res["skipped"].items()] + [""]
        lines += [f"![{res['model']}](compare_{res['model']}.png)", ""]
    lines += ["## Does search win at >= 16x?", "", "Means over the seeds run; a test set of 1,000 images makes one "
              "image 0.1 point.", ""] + [v for res in results for v in verdict(res)] + [""]
    lines += ["## Read with care", "",
              "- With fine-tuning from the method's weights, the search and DiffQ have trained the weights for "
              "their search epochs before the common fine-tuning; the other rows start it from the float "
              "checkpoint. In these quick settings the float models are under-trained, so part of the search's "
              "lead at 24x and 28x is that extra training (on LeNet-5 it beats the float model). "
              "`--finetune-from float` isolates the allocations (see compare_control_finetune_from_float.md).",
              "- DiffQ's sizes are coarse (one bitwidth per layer, rounded): it lands at or under the budget, "
              "sometimes far under (LeNet-5 16x: 23.4x). At the penalties that reach 24x-28x its trained weights "
              "degrade or collapse (LeNet-5 28x: every layer at 1 bit, 10%); with the float weights its 28x bits "
              "are uniform 1-bit.",
              "- Search step / float step is measured interleaved on the same batch; search wall time / one float "
              "epoch uses timings taken minutes apart on cores shared with other jobs: read both as rough.", ""]
    (out / "compare_methods.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the full recipes (for a GPU)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long wiring check on digits_cnn")
    p.add_argument("--models", default="lenet5,resnet20", help="comma-separated: lenet5, resnet20")
    p.add_argument("--methods", default="uniform,hessian,random,diffq,mct,search")
    p.add_argument("--cifar-root", default="../shared/data/cifar10-jpeg.zip", help="the CIFAR-10 folder or zip")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--finetune-from", choices=("method", "float"), default="method",
                   help="method (default, as `mixbits search` does): fine-tune the weights the method hands over "
                        "(the search's and DiffQ's trained weights, the float ones for the others); float: every row "
                        "fine-tunes its bits from the float weights, so rows differ only by their bits")
    p.add_argument("--work", default="runs/compare_work", help="where the float checkpoints are kept (reused if present)")
    p.add_argument("--append", action="store_true",
                   help="keep the saved rows of the methods not named in --methods (rerun some methods only)")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild compare_methods.md from the saved compare_<model>.json (after runs per model)")
    p.add_argument("--retrain", action="store_true", help="train the float models even if a checkpoint exists")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a CPU shared with other jobs, more threads than free "
                        "cores makes every step many times slower)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.mode = "full" if args.full else "smoke" if args.smoke else "quick"
    if args.smoke:
        args.models = "digits_cnn"
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/compare_methods.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.command = command
    if not args.report_only:
        with open(out / "compare_command.txt", "a") as f:
            f.write(f"{command}\n  commit {_git_head()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                    f"machine: 2-core CPU container, no GPU\n")
    results = []
    if args.report_only:  # rebuild compare_methods.md from the saved compare_<model>.json files
        import json

        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            res = json.loads((out / f"compare_{name}.json").read_text())
            results.append(res)
            plot_pareto([r for r in res["rows"] if r["method"] != "float"], out / f"compare_{name}.png",
                        float_accuracy=res["float_accuracy"], title=f"{name} on {res['data']} ({args.mode} mode)")
        write_markdown(results, out, command, args.mode)
        print((out / "compare_methods.md").read_text())
        return 0
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(run_model(name, PROFILES[args.mode][name], args, out))
        write_markdown(results, out, command, args.mode)
    print((out / "compare_methods.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
