"""``mixbits report``: Markdown + self-contained HTML with plots, rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from mixbits.cli import main  # noqa: E402
from mixbits.report_html import load_sweep, write_run_report  # noqa: E402
from mixbits.run import RunConfig, run_search  # noqa: E402


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_search(RunConfig(method="search", float_epochs=2, search_epochs=3, finetune_epochs=1, train_subset=400, batch_size=40,
                             target="16x", device="cpu", out=str(out)), progress=False)
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(scope="module")
def sweep_rows() -> list[dict]:
    return [{"method": m, "target": t, "weight_compression": c, "test_accuracy": a}
            for m, t, c, a in [("search", "8x", 8.0, 0.975), ("search", "16x", 16.0, 0.97), ("search", "24x", 24.0, 0.962),
                               ("hessian", "16x", 16.0, 0.955), ("random", "16x", 15.8, 0.93),
                               ("uniform:1", "32x", 31.0, 0.91), ("uniform:8", "4x", 4.0, 0.978)]]


def test_report_writes_markdown_and_self_contained_html(run_folder, sweep_rows, tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"rows": sweep_rows}))
    paths = write_run_report(run_folder, sweep=sweep)
    page = paths["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # bits, probabilities, progress, Pareto
    assert not re.search(r'(src|href)="(https?:|//|file:)', page), "the page must not load anything"
    report = json.loads((run_folder / "report.json").read_text())
    for row in report["layers"]:
        assert f"<code>{row['name']}</code>" in page
    md = paths["markdown"].read_text()
    for name in ("bits", "probabilities", "progress", "pareto"):
        assert f"(plots/{name}.png)" in md
        assert (run_folder / "plots" / f"{name}.png").stat().st_size > 5000
    assert "| `features.0`" in md


def test_report_without_sweep_has_no_pareto_and_accepts_csv(run_folder, sweep_rows, tmp_path):
    paths = write_run_report(run_folder, out=tmp_path / "r")
    assert "Pareto" not in paths["html"].read_text()
    csv_path = tmp_path / "sweep.csv"
    csv_path.write_text("method,weight_compression,test_accuracy\n" +
                        "".join(f"{r['method']},{r['weight_compression']},{r['test_accuracy']}\n" for r in sweep_rows))
    assert len(load_sweep(csv_path)) == len(sweep_rows)


def test_report_bad_input_is_a_clear_error(run_folder, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert main(["report", str(tmp_path / "unfinished")]) == 2
    assert "no report.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"method": "search", "test_accuracy": 0.9}]))
    assert main(["report", str(run_folder), "--sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing weight_compression" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_renders_in_headless_chromium(run_folder, sweep_rows, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(sweep_rows))
    page = write_run_report(run_folder, sweep=sweep)["html"]
    shot = tmp_path / "page.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000", f"--screenshot={shot}",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = torch.from_numpy(mpimg.imread(shot))  # (H, W, 3 or 4), floats in [0, 1]
    assert pixels.shape[0] == 3000 and pixels.shape[1] == 1200
    rgb = pixels[..., :3]
    non_white = (rgb < 0.95).any(-1).float()  # (H, W)
    rows_with_ink = int((non_white.mean(1) > 0.01).sum())
    assert rows_with_ink > 1500, "the page should be covered by tables and plots, not blank"
    colours = torch.unique((rgb * 15).round().reshape(-1, 3), dim=0)
    assert len(colours) > 50, "plots in colour were drawn"


def test_bits_per_structure_get_a_heat_map_with_the_moved_structures(tmp_path):
    from mixbits.report_html import build_plots, load_run

    out = tmp_path / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_search(RunConfig(method="search", granularity="group:8", float_epochs=1, search_epochs=2,
                             finetune_epochs=1, train_subset=200, batch_size=40, target="16x", device="cpu",
                             out=str(out)), progress=False)
    finally:
        torch.set_num_threads(n)
    run = load_run(out)
    grouped = [r for r in run["report"]["layers"] if "structures" in r]
    assert grouped and all(len(r["bits"]) == r["structures"] for r in grouped)
    start = run["search"]["info"]["start_bits"]
    assert all(len(start[r["name"]]) == r["structures"] for r in grouped)
    figures = build_plots(run)
    assert figures["structures"][:8] == b"\x89PNG\r\n\x1a\n"
    paths = write_run_report(out)
    page = paths["html"].read_text()
    assert "<h2>Bits per structure</h2>" in page and "structures of 8 channels" in page
    assert "moved during the search" not in page  # in the image, not the text; the caption explains the dots
    assert "a dot marks every structure" in page
