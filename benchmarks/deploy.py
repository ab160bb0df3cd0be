"""Deployment forms of a searched model: size, agreement with ``mixbits.load``, latency and memory.

For three models, each exported to a ``.mbits`` file, every form is measured in a fresh
subprocess (one torch / onnxruntime thread): its file bytes against the promised size, the max
|output difference| from ``mixbits.load`` on 8 fixed inputs, the median latency at batch 1 and
64, and the peak resident memory (VmHWM) of loading and of running, minus the process's
resident memory after ``import torch, mixbits`` (and onnxruntime / qonnx where the form needs them).
The transformer's file names its builder (``import_path="deploy:transformer"``, loaded with
``trust_code=True``), so ``load(packed=True)`` builds it on the meta device and never allocates its
quantized weights in float.

Models: the digits CNN of a ``mixbits search`` run folder (``--run``, the default search);
ResNet-20 (the committed CIFAR-10 checkpoint) at 24x with bits derived post-training from the
prepared space's initial preferences, filled to the budget (no search, no fine-tuning: only the
forms are compared); a 13.7M-parameter decoder-style transformer with random weights at 16x, and
the same transformer with every layer at 4 bits (where onnxruntime's MatMulNBits applies).

    python benchmarks/deploy.py --run RUN_FOLDER --out benchmarks/results/deploy.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _provenance import describe  # noqa: E402

FORMS = ("mbits", "packed_torch", "float_ckpt", "onnx_packed", "onnx_packed_acc0", "onnx_matmulnbits", "onnx_float",
         "qonnx")
# onnx_packed_acc0: the packed file with the session option session.qdq_matmulnbits_accuracy_level=0, which stops
# onnxruntime from fusing an 8-bit DequantizeLinear + MatMul into a MatMulNBits that quantizes its activations to int8


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = 6

    def forward(self, x):  # x: (B, T, d)
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)  # (B, T, d) each
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, h, T, d/h)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)  # (B, h, T, T)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """Token ids (as floats, for one ONNX input type) -> next-token logits of the last position."""

    def __init__(self, vocab: int = 4096, d: int = 384, layers: int = 6, seq: int = 32) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(seq, d))
        self.blocks = nn.Sequential(*[Block(d) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids):  # ids: (B, T) float
        x = self.emb(ids.long()) + self.pos  # (B, T, d)
        return self.head(self.ln(self.blocks(x))[:, -1])  # (B, vocab)


def transformer() -> nn.Module:
    torch.manual_seed(0)
    return Transformer()


def _inputs(name: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if name.startswith("transformer"):
        return torch.randint(0, 4096, (batch, 32), generator=g).float()
    return torch.randn((batch, *SHAPES[name]), generator=g)


SHAPES = {"digits": (1, 8, 8), "resnet20": (3, 32, 32), "transformer": (32,), "transformer_4bit": (32,)}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def measure(name: str, form: str, files: dict) -> dict:
    """In this (fresh) process: load one form, run it, report bytes, outputs, latency and memory."""
    import safetensors.torch  # noqa: F401  (imported lazily by mixbits.load: part of the baseline)

    import mixbits
    import mixbits.export.loader  # noqa: F401
    import mixbits.models  # noqa: F401

    torch.set_num_threads(1)
    if form.startswith("onnx"):
        import onnxruntime as ort
    if form == "qonnx":
        from mixbits.export.qonnx_export import execute_qonnx
    trust = name.startswith("transformer")  # its recipe imports deploy:transformer (this file)
    # A model built on the meta device (mixbits.load's shape check, load(packed=True)) whose init calls normal_
    # imports ~800 torch modules (~70 MB resident, once per process): part of the baseline, not of a model.
    torch.empty(1, device="meta").normal_()
    base = _status("VmRSS:")
    path = files[form]
    t0 = time.perf_counter()
    if form in ("mbits", "packed_torch"):
        net = mixbits.load(path, packed=form == "packed_torch", trust_code=trust)
        run = lambda x: net(x).numpy()  # noqa: E731
    elif form == "float_ckpt":
        net = transformer() if trust else mixbits.models.create_model(files["zoo"][0], **files["zoo"][1])  # the float architecture
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
        run = lambda x: net(x).numpy()  # noqa: E731
    elif form.startswith("onnx"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        if form == "onnx_packed_acc0":
            opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
            path = files["onnx_packed"]
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        run = lambda x: sess.run(None, {"input": x.numpy()})[0]  # noqa: E731
    else:
        run = lambda x: execute_qonnx(path, x.numpy())  # noqa: E731
    load_s = time.perf_counter() - t0
    load_peak = _status("VmHWM:") - base
    resident = _status("VmRSS:") - base
    lat = {}
    with torch.no_grad():
        out = run(_inputs(name, 8))
        for batch in (1, 64):
            x = _inputs(name, batch)
            times = []
            while len(times) < 3 or (sum(times) < 1.0 and len(times) < 50):
                t = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t)
            lat[batch] = float(np.median(times))
    return {"bytes": os.path.getsize(path), "out": out.tolist(), "load_s": load_s, "load_peak": load_peak,
            "resident": resident, "run_peak": _status("VmHWM:") - base, "lat1": lat[1], "lat64": lat[64]}


def _export_all(name: str, folder: Path, run: str | None) -> tuple[dict, float]:
    """Write every form's file; return {form: path} and the promised bytes."""
    import mixbits
    from mixbits import PrepareConfig, export_model, prepare_
    from mixbits.budget import budget_bits
    from mixbits.export import export_onnx, export_run, read_mbits
    from mixbits.search import derive_bits

    mb = folder / f"{name}.mbits"
    model = None
    if name == "digits":
        export_run(run, mb)
    else:
        if name == "resnet20":
            ckpt = torch.load(HERE / "checkpoints/resnet20_cifar10_e37.pt", weights_only=True, map_location="cpu")
            from mixbits.models import create_model

            model = create_model("resnet20", **ckpt["model_kwargs"])
            model.load_state_dict(ckpt["state_dict"])
            recipe = {"zoo": "resnet20", "model_kwargs": ckpt["model_kwargs"]}
            target, pre = "24x", {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}
        else:
            model, recipe, target, pre = transformer(), {"import_path": "deploy:transformer"}, "16x", None
        space = prepare_(model, PrepareConfig(candidates=(1, 2, 3, 4, 8, 16, 32)))
        if name == "transformer_4bit":  # every layer at 4 bits: where MatMulNBits applies
            bits = {layer.name: 4 for layer in space.layers}
        else:
            bits = derive_bits(space, budget_bits(target, space.cost))
        space.fix_(bits)
        export_model(model.eval(), space, mb, input_shape=SHAPES[name], preprocessing=pre, **recipe)
        mixbits.unprepare_(model)
    files = {"mbits": str(mb)}
    net = mixbits.load(mb, trust_code=True)
    source = read_mbits(mb).manifest["model"]
    files["float_ckpt"] = str(folder / f"{name}.pt")
    torch.save(net.state_dict(), files["float_ckpt"])
    for form, kind in (("onnx_packed", "packed"), ("onnx_matmulnbits", "matmulnbits"), ("onnx_float", "float"),
                       ("qonnx", "qonnx")):
        files[form] = str(folder / f"{name}.{form}.onnx")
        export_onnx(mb, files[form], trust_code=True, form=kind)
    files["packed_torch"] = str(mb)
    files["onnx_packed_acc0"] = files["onnx_packed"]
    files["zoo"] = [source.get("zoo"), source.get("kwargs", {})] if "zoo" in source else None
    return files, read_mbits(mb).manifest["promised_model_bits"] / 8


from mixbits.export import read_mbits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a finished mixbits search --out folder (the digits CNN)")
    ap.add_argument("--out", default=str(HERE / "results/deploy.md"))
    ap.add_argument("--work", default="/tmp/mixbits_deploy")
    ap.add_argument("--models", default="digits,resnet20,transformer,transformer_4bit")
    ap.add_argument("--measure", nargs=3, metavar=("MODEL", "FORM", "FILES_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        name, form, files = args.measure
        print(json.dumps(measure(name, form, json.loads(files))))
        return
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["# Deployment forms: size, agreement, latency, memory", "", describe(), "",
             "Each form measured in a fresh subprocess, 1 thread. `diff`: max |output - mixbits.load output| on 8 "
             "fixed inputs, relative to the largest |output|. Memory: VmHWM after loading / after running, and VmRSS "
             "after loading (`resident`), minus VmRSS after the imports. Latency: median of >= 3 runs.", ""]
    for name in args.models.split(","):
        files, promised = _export_all(name, work, args.run)
        rows = {}
        for form in FORMS:
            if name.startswith("transformer") and form == "qonnx":
                continue  # the qonnx executor runs node by node in numpy: minutes per batch of 64
            res = subprocess.run([sys.executable, __file__, "--measure", name, form, json.dumps(files)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if res.returncode:
                rows[form] = {"error": res.stderr.strip().splitlines()[-1][:200]}
                continue
            rows[form] = json.loads(res.stdout.strip().splitlines()[-1])
        ref = np.asarray(rows["mbits"]["out"])
        scale = float(np.abs(ref).max())
        lines += [f"## {name}", "", f"promised size {promised:,.0f} B; float32 model "
                  f"{os.path.getsize(files['float_ckpt']):,} B (torch.save of its state dict)", "",
                  "| form | file bytes | / promised | diff (rel.) | load peak MiB | resident MiB | run peak MiB "
                  "| ms batch 1 | ms batch 64 |", "|---|---|---|---|---|---|---|---|---|"]
        for form, r in rows.items():
            if "error" in r:
                lines.append(f"| {form} | error: {r['error']} | | | | | | | |")
                continue
            diff = float(np.abs(np.asarray(r["out"]) - ref).max()) / scale
            mib = 1 / 2**20
            lines.append(f"| {form} | {r['bytes']:,} | {r['bytes'] / promised:.2f} | {diff:.1e} | "
                         f"{r['load_peak'] * mib:.1f} | {r['resident'] * mib:.1f} | {r['run_peak'] * mib:.1f} | "
                         f"{1e3 * r['lat1']:.2f} | {1e3 * r['lat64']:.1f} |")
        largest = max(4 * rec.num_weights for rec in read_mbits(files["mbits"]).layers)
        pk, fc = rows.get("packed_torch", {}), rows.get("float_ckpt", {})
        if "resident" in pk and "load_peak" in fc:
            bound = 1.3 * promised + largest
            lines += ["", f"load(packed=True): resident {pk['resident'] / 2**20:.1f} MiB against 1.3 x promised + largest "
                          f"layer in float32 ({largest:,} B) = {bound / 2**20:.1f} MiB: "
                          f"{'within' if pk['resident'] <= bound else 'ABOVE'}; load peak {pk['load_peak'] / 2**20:.1f} "
                          f"MiB against {fc['load_peak'] / 2**20:.1f} MiB for the float checkpoint: "
                          f"{'below' if pk['load_peak'] < fc['load_peak'] else 'NOT below'}"]
        lines.append("")
        Path(args.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines[-len(rows) - 6:]), flush=True)


if __name__ == "__main__":
    main()
