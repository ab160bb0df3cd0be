import json
import re

import pytest

from mixbits.cli import main

FAST = ["--float-epochs", "2", "--search-epochs", "2", "--finetune-epochs", "1", "-q"]


def test_search_writes_run_folder_and_prints_report_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "--target", "16x", "--pin", "features.0=8", *FAST]) == 0
    printed = capsys.readouterr().out
    for name in ("settings.json", "bits.json", "report.json", "report.md", "finetuned.pt", "float.pt", "search.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    bits = json.loads((out / "bits.json").read_text())
    assert bits["features.0"] == 8
    assert report["totals"]["quantized_bits"] <= report["budget_bits"]
    assert f"{report['totals']['weight_compression']:.2f}x" in printed
    assert f"{100 * report['final_test_accuracy']:.2f}%" in printed
    assert re.search(r"features\.0 \*\s+Conv2d\s+288\s+8", printed)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["target"] == "16x" and settings["pins"] == {"features.0": 8}


def test_config_file_and_command_line_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('target = "8x"\nsearch_epochs = 2\nfloat_epochs = 2\nfinetune_epochs = 1\nseed = 3\n')
    out = tmp_path / "run"
    assert main(["search", "-c", str(cfg), "--target", "12x", "--out", str(out), "-q"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["target"] == "12x" and settings["seed"] == 3


@pytest.mark.parametrize("args,message", [
    (["--target", "40x"], "unreachable"),
    (["--target", "0x"], "must be positive"),
    (["--target", "ten"], "cannot parse target"),
    (["--pin", "nolayer=8"], "matches no quantizable layer"),
    (["--exclude", "nolayer"], "matches no quantizable layer"),
    (["--bits", "1,3,12"], "unsupported bitwidth 12"),
    (["--model", "nomodel"], "unknown model 'nomodel'; known:"),
    (["--data", "nodata"], "unknown data set 'nodata'; known:"),
    (["--method", "nomethod"], "unknown method 'nomethod'; known:"),
    (["--checkpoint", "/nonexistent/float.pt"], "does not exist"),
    (["--granularity", "rows"], "unknown granularity 'rows': write layer, channel, group:N"),
    (["--granularity", "group:0"], "a group needs at least one channel"),
    (["--loss", "nomodule_xyz:loss"], "cannot import module 'nomodule_xyz'"),
    (["--loss", "cross_entropy"], "package.module:function"),
    (["--param", "no.such.param"], "are not parameters of the model"),
    (["--target", "16x:everything"], "unknown scope"),
])
def test_bad_input_fails_fast_with_a_clear_message(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (out / "float.pt").exists()


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('targett = "8x"\n')
    assert main(["search", "-c", str(cfg), "-q"]) == 2
    assert "unknown keys ['targett']" in capsys.readouterr().err


def test_granularity_from_a_config_file_is_checked_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('granularity = "group:x"\n')
    out = tmp_path / "run"
    assert main(["search", "-c", str(cfg), "--out", str(out), *FAST]) == 2
    assert "unknown granularity 'group:x'" in capsys.readouterr().err
    assert not out.exists()


def test_search_per_structure_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "--granularity", "group:8", "--target", "20x", *FAST]) == 0
    bits = json.loads((out / "bits.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert [len(bits[n]) for n in ("features.0", "features.3", "features.7", "classifier")] == [4, 8, 8, 2]
    assert report["totals"]["quantized_bits"] <= report["budget_bits"]
    assert json.loads((out / "settings.json").read_text())["granularity"] == "group:8"
    printed = capsys.readouterr().out
    assert "(8 x 8ch)" in printed and "bits per structure from a to b" in printed
    packed = report["packed_file"]
    assert packed["file_bytes"] <= packed["promised_bytes"] + packed["header_bytes"]


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of a run: a new line, and the command that resumes it."""
    from mixbits.pipeline import search_job

    def interrupted(*args, **kwargs):  # what a SIGINT does inside the float training
        raise KeyboardInterrupt

    monkeypatch.setattr(search_job, "fit_float_", interrupted)
    out = tmp_path / "run"
    assert main(["search", "-q", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("\n") and (out / "settings.json").is_file()
    assert err.splitlines()[-1] == f"mixbits search: interrupted; continue it with: mixbits search --resume {out}"


def test_version(capsys):
    from mixbits import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mixbits {__version__}"


@pytest.mark.parametrize("toml, message", [
    ('pins = ["features.0=8"]\nfloat_epochs = 0', None),
    ("pins = [3]", 'pins in config file .*: 3 is not a pin; write a table, pins = {"features.0" = 8}'),
    ('pins = ["features.0"]', "a pin is LAYER=BITS"),
])
def test_pins_in_a_config_file(tmp_path, capsys, toml, message):
    from mixbits.commands.options import resolve_config
    from mixbits.cli import build_parser
    from mixbits.run import RunConfig

    (tmp_path / "c.toml").write_text(toml)
    args = build_parser().parse_args(["search", "-c", str(tmp_path / "c.toml")])
    if message is None:
        assert resolve_config(RunConfig, args, skip=set()).pins == {"features.0": 8}
    else:
        with pytest.raises(ValueError, match=message):
            resolve_config(RunConfig, args, skip=set())


def test_a_pin_that_is_not_a_candidate_fails_before_any_work(tmp_path, capsys):
    assert main(["search", "--pin", "features.0=3", "--out", str(tmp_path / "run")]) == 2
    assert "3 bits is not a candidate (1,2,4,8,16,32)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_search_with_a_loss_a_whole_model_target_and_a_param(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text('loss = "torch.nn.functional:multi_margin_loss"\nparams = ["classifier.weight"]\n')
    args = ["search", "-c", str(cfg), "--out", str(out), "--target", "8x:model", *FAST]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["model_bits"] * 8 <= report["totals"]["float_model_bits"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["loss"] == "torch.nn.functional:multi_margin_loss" and settings["target"] == "8x:model"
