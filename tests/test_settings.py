"""Typed settings: a wrong type or range names the key and the file, before any folder or training."""

from __future__ import annotations

import pytest

from mixbits.cli import main


@pytest.mark.parametrize("toml, message", [
    ('float_epochs = "ten"', "float_epochs = 'ten' in config file {cfg!r}: input should be a valid integer"),
    ("float_epochs = 2.5", "float_epochs = 2.5 in config file {cfg!r}: input should be a valid integer"),
    ("batch_size = 1.5", "batch_size = 1.5 in config file {cfg!r}: input should be a valid integer"),
    ("[data]\nname = 'digits'", "data = {{'name': 'digits'}} in config file {cfg!r}: input should be a valid string"),
    ('distill = "no"', "distill = 'no' in config file {cfg!r}: input should be a valid boolean"),
    ('seed = "abc"', "seed = 'abc' in config file {cfg!r}: input should be a valid integer"),
    ('candidates = "1,2,4"', "candidates = '1,2,4' in config file {cfg!r}: input should be a valid tuple"),
    ("held_out_fraction = 1.5", "held_out_fraction = 1.5 in config file {cfg!r}: input should be less than 1"),
    ("[method_options]\nbogus = 1", "unknown method_options ['bogus'] for method 'probe' in config file {cfg!r}"),
    ("pins = {'features.0' = 'eight'}", "pins.features.0 = 'eight' in config file {cfg!r}"),
])
def test_bad_config_values_name_key_and_file_before_any_folder(tmp_path, capsys, toml, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml + "\n")
    out = tmp_path / "run"
    assert main(["search", "-c", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert message.format(cfg=str(cfg)) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("command, args, message", [
    ("search", ["--held-out-fraction", "1.5"], "held_out_fraction = 1.5 in the command line: input should be less"),
    ("search", ["--batch-size", "0"], "batch_size = 0 in the command line: input should be greater than or equal to 1"),
    ("search", ["--float-lr", "-1"], "float_lr = -1.0 in the command line: input should be greater than 0"),
    ("sweep", ["--held-out-fraction", "0"], "held_out_fraction = 0.0 in the command line: input should be greater than 0"),
    ("train", ["--momentum", "1.5"], "momentum = 1.5 in the command line: input should be less than 1"),
    ("train", ["--epochs", "0"], "epochs = 0 in the command line"),
])
def test_bad_command_line_values_leave_no_folder(tmp_path, capsys, command, args, message):
    out = tmp_path / "run"
    assert main([command, "--out", str(out), "-q", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_binary_config_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "model.bin"
    cfg.write_bytes(bytes(range(256)) * 4)
    assert main(["search", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert f"config file {str(cfg)!r} is not valid TOML" in capsys.readouterr().err


def test_sweep_method_options_are_checked(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text("[method_options.random]\nbogus = 1\n")
    assert main(["sweep", "-c", str(cfg), "--out", str(tmp_path / "s")]) == 2
    assert "unknown method_options ['bogus'] for method 'random'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("method, good", [("fracbits", {"steps": 5, "init": "hessian"}),
                                          ("pairwise", {"window": 1, "interactions": False}),
                                          ("probe", {"methods": ["hessian"], "steps": 4})])
def test_fracbits_and_pairwise_options_are_checked_before_the_run(method, good):
    from mixbits.settings import check_method_options

    check_method_options(good, [method], "the command line")
    with pytest.raises(ValueError, match=f"unknown method_options \\['bogus'\\] for method '{method}'"):
        check_method_options({"bogus": 1}, [method], "the command line")
