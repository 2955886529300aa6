"""``vlae train``'s named flags: each sets an existing configuration field with
that field's type, and the help lists the same flags as before they were derived
from the configuration dataclasses."""

from __future__ import annotations

import dataclasses
import re
from typing import get_args, get_type_hints

import pytest

from vlae import cli
from vlae.cli.train import TRAIN_FLAGS, flag_field
from vlae.config import ModelConfig, TrainConfig

#: `vlae train --help` before the flags were derived from the configuration (main at c0ae5d3), in order.
HELP_FLAGS = [
    "--help", "--preset", "--run-dir", "--resume", "--overwrite", "--epochs", "--max-steps", "--time-budget",
    "--batch-size", "--lr", "--optimizer", "--seed", "--dataset", "--data-dir", "--device", "--precision",
    "--cuda-graph", "--polyak", "--kl-warmup-steps", "--eval-every", "--eval-k", "--checkpoint-every",
    "--checkpoint-steps", "--checkpoint-seconds", "--max-skipped-steps", "--latent-dim", "--prior", "--posterior",
    "--decoder", "--decoder-layers", "--decoder-kernel", "--free-bits", "--train-on-valid", "--soft-free-bits",
    "--compile", "--tensorboard", "--progress", "--set", "--threads", "--quiet", "--no-figures",
]
SECTIONS = {"train": TrainConfig, "model": ModelConfig}


def _train_parser():
    return _subcommands()[1]["train"]


@pytest.mark.parametrize("section, flag, text", TRAIN_FLAGS, ids=[flag for _, flag, _ in TRAIN_FLAGS])
def test_every_train_flag_sets_a_field_of_its_type(section, flag, text):
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    name, typ = flag_field(section, flag)
    assert name in fields, f"{flag} names no field of {section}"
    declared = get_type_hints(SECTIONS[section])[name]
    assert typ is declared or (type(None) in get_args(declared) and typ in get_args(declared))
    action = next(a for a in _train_parser()._actions if flag in a.option_strings)
    assert action.dest == name and action.default is None and action.help == text
    if typ is bool:
        assert action.nargs == 0 and action.const is True  # a switch
    else:
        assert action.type is typ


def test_train_help_lists_the_same_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--help"])
    assert stop.value.code == 0
    options = capsys.readouterr().out.split("options:", 1)[1]
    listed = re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", options, flags=re.M)  # option lines, not wrapped help
    assert listed == HELP_FLAGS


def test_flag_values_reach_the_config_as_the_fields_type():
    args = _train_parser().parse_args(["--preset", "tiny", "--lr", "0.5", "--epochs", "3", "--data-dir", "d",
                                       "--compile", "--latent-dim", "4"])
    cfg = cli.config_from_args(args)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.data_dir, cfg.train.compile) == (0.5, 3, "d", True)
    assert cfg.model.latent_dim == 4 and cfg.train.soft_free_bits is False  # a switch left out keeps the preset's


def test_a_flag_naming_no_field_is_caught():
    with pytest.raises(KeyError):
        flag_field("train", "--no-such-field")


def _subcommands():
    """The ``vlae`` parser and its subcommands' parsers by name."""
    parser = cli.build_parser()
    return parser, next(a for a in parser._actions if a.dest == "command").choices


def test_every_command_that_writes_a_file_takes_o_and_out():
    """One CLI style: the output of ``sample``, ``eval``, ``compress``, ``decompress``,
    ``sweep`` and ``ablation`` is ``-o`` or ``--out`` alike (``--output`` stays for the codec)."""
    parser, commands = _subcommands()
    writers = [name for name in commands if any("--out" in a.option_strings for a in commands[name]._actions)]
    assert {"sample", "eval", "compress", "decompress"} <= set(writers)
    for name in writers:
        action = next(a for a in commands[name]._actions if "--out" in a.option_strings)
        assert "-o" in action.option_strings, name
    assert parser.parse_args(["sample", "r", "-o", "a.png"]).out == "a.png"
    assert parser.parse_args(["compress", "r", "x.npy", "--out", "a.vlae"]).output == "a.vlae"
    assert parser.parse_args(["decompress", "r", "a.vlae", "--output", "x.npy"]).output == "x.npy"


def test_every_command_that_loads_a_model_takes_weights_device_and_threads():
    """One CLI style: a trained model's commands spell ``--weights``, ``--device`` and
    ``--threads`` alike (one helper, ``add_model_options``); ``tests/test_cli.py`` runs
    ``sample`` with them."""
    parser, commands = _subcommands()
    loaders = [name for name in commands if any("--weights" in a.option_strings for a in commands[name]._actions)]
    assert set(loaders) == {"eval", "sample", "compress", "decompress"}
    for name in loaders:
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--device", "--threads"} <= options, name
    args = parser.parse_args(["sample", "r", "--device", "cpu", "--threads", "1", "--weights", "raw"])
    assert (args.device, args.threads, args.weights) == ("cpu", 1, "raw")
    assert parser.parse_args(["compress", "r", "x.npy", "-o", "a.vlae"]).device is None  # the codec: the CPU


def test_every_command_that_reads_a_dataset_takes_data_dir(tmp_path, monkeypatch):
    """One CLI style: ``--data-dir`` wherever a dataset is read, the sweep and the ablation
    included (for every run, as ``train.data_dir``, absolute; a ``--set`` of it still wins)."""
    from vlae.cli._experiment import experiment_settings

    parser, commands = _subcommands()
    for name in ("train", "eval", "compress", "download", "reproduce", "sweep", "ablation"):
        assert any("--data-dir" in a.option_strings for a in commands[name]._actions), name
    monkeypatch.chdir(tmp_path)
    for command in ("sweep", "ablation"):
        args = parser.parse_args([command, "--preset", "tiny", "--data-dir", "data"])
        assert experiment_settings(args)[0].train.data_dir == str(tmp_path / "data")
    args = parser.parse_args(["sweep", "--data-dir", "data", "--set", "train.data_dir=other"])
    assert experiment_settings(args)[0].train.data_dir == "other"
    assert experiment_settings(parser.parse_args(["ablation"]))[0].train.data_dir is None


def test_every_progress_bar_is_spelled_alike():
    """One CLI style: the long-running commands (``train``, ``eval``, ``sample``, ``compress``,
    ``decompress``) take ``--progress auto|on|off``."""
    parser, commands = _subcommands()
    bars = {n: next((a for a in p._actions if "--progress" in a.option_strings), None) for n, p in commands.items()}
    assert {name for name, a in bars.items() if a is not None} == {"train", "eval", "sample", "compress", "decompress"}
    assert all(tuple(a.choices) == ("auto", "on", "off") for a in bars.values() if a is not None)
