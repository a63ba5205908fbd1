import json
import subprocess
import sys

import pytest

from mstlib.config import (
    MODEL_SIZES, AttentionConfig, ModelConfig, RunConfig, ScheduleConfig, apply_overrides, model_size,
    parse_override,
)
from mstlib.errors import ConfigError


def test_defaults_validate_and_roundtrip():
    cfg = RunConfig().validate()
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.run_id() == cfg.run_id()


@pytest.mark.parametrize(
    "d,match",
    [
        ({"train": {"max_iter": 3}}, "did you mean 'max_iters'"),
        ({"sparse_schedule": "mst"}, "unknown config key 'sparse_schedule'"),  # the official code's kind of typo
        ({"schedule": {"kind": "ramp"}}, "not one of"),
        ({"schedule": {"s_max": 1.0}}, r"in \[0, 1\)"),
        ({"schedule": {"s_max": -0.1}}, r"in \[0, 1\)"),
        ({"schedule": {"warmup_end": 0.8, "restore_start": 0.5}}, "overlap"),
        ({"schedule": {"s_end": 0.95, "s_max": 0.9}}, "must not prune"),
        ({"schedule": {"kind": "mst", "sparsity": 0.5}}, "only read when"),
        ({"attention": {"pattern": "local", "window": 4096}}, "larger than the context"),
        ({"attention": {"layers": [12]}}, "outside"),
        ({"attention": {"start": 0.2}}, "only read when"),
        ({"train": {"max_iters": "10"}}, "must be an integer"),
        ({"train": {"compile": 1}}, "not one of"),
        ({"train": {"compile": "max-autotune"}}, "not one of"),
        ({"train": {"min_lr": 1e-3, "lr": 1e-4}}, "min_lr <= lr"),
        ({"topology": {"update_interval": 0}}, ">= 1"),
        ({"model": {"n_embd": 100, "n_head": 12}}, "divisible"),
        ({"schedule": {"kind": "dense"}}, "growth='none'"),
        ({"schedule": {"kind": "constant", "sparsity": 0.5}, "attention": {"pattern": "local"}}, "needs the MST"),
        ({"model": 3}, "must be a mapping"),
    ],
)
def test_bad_settings_are_clear_errors(d, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(d)


def test_literal_checked_when_built_in_python():
    cfg = RunConfig(attention=AttentionConfig(pattern="banded"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="banded"):
        cfg.validate()


def test_overrides():
    cfg = RunConfig().replace(**{"train.max_iters": 10, "seed": 3, "attention.layers": (0, 1)})
    assert cfg.train.max_iters == 10 and cfg.seed == 3 and cfg.attention.layers == (0, 1)
    with pytest.raises(ConfigError, match="unknown config key 'train.max_iter'"):
        apply_overrides(RunConfig().to_dict(), {"train.max_iter": 1})
    assert parse_override("train.lr=0.001") == ("train.lr", 0.001)
    assert parse_override("data.corpus=offline") == ("data.corpus", "offline")
    assert parse_override("attention.layers=[0,2]") == ("attention.layers", [0, 2])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_run_id_is_stable_and_sensitive():
    cfg = RunConfig()
    code = "from mstlib.config import RunConfig; print(RunConfig().run_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == cfg.run_id()
    shuffled = dict(reversed(list(cfg.to_dict().items())))
    assert RunConfig.from_dict(shuffled).run_id() == cfg.run_id()
    ids = {cfg.run_id()}
    for change in ({"seed": 1}, {"train.lr": 5e-4}, {"schedule.s_max": 0.8}, {"topology.growth": "random"},
                   {"attention.window": 64}, {"model.n_layer": 6}, {"data.corpus": "x"}):
        ids.add(cfg.replace(**change).run_id())
    assert len(ids) == 8
    # the compile mode: true keeps its id (the stored runs' ids), CUDA graphs are a run of their own
    assert cfg.replace(**{"train.compile": True}).run_id() == cfg.run_id()
    assert cfg.replace(**{"train.compile": "reduce-overhead"}).run_id() not in ids


def test_stored_runs_keep_their_run_ids():
    """Every stored run's config still hashes to its folder's name: a new config field (or a changed
    default) that would orphan the book's stored runs fails here."""
    from pathlib import Path

    from mstlib.results import RunStore

    import warnings

    from mstlib.errors import CorruptRunWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptRunWarning)  # a stored run that cannot be read fails here too
        store = RunStore(Path(__file__).resolve().parent.parent / "results")
        runs = store.find(done_only=False)
    assert runs, "no stored runs in results/"
    for r in runs:
        assert r.run.run_id() == r.run_id, r.path
        assert store.run_dir(r.run) == r.path, r.path  # found by its id where it is stored


def test_model_sizes():
    assert model_size("paper") == ModelConfig(12, 12, 768, 1024, 50304)
    assert set(MODEL_SIZES) >= {"paper", "mini", "smoke"}
    with pytest.raises(ConfigError, match="choose one of"):
        model_size("gpt2-xxl")


def test_schedule_config_kinds():
    ScheduleConfig(kind="constant", sparsity=0.7).validate()
    ScheduleConfig(kind="mst", warmup_end=0.0, restore_start=1.0).validate()


def _float_paths(cls=RunConfig, prefix=""):
    """Dotted paths of every float field of the config tree."""
    import dataclasses
    from typing import get_type_hints

    out = []
    for name, typ in get_type_hints(cls).items():
        if dataclasses.is_dataclass(typ):
            out += _float_paths(typ, f"{prefix}{name}.")
        elif typ is float:
            out.append(f"{prefix}{name}")
    return out


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN"])
@pytest.mark.parametrize("path", _float_paths())
def test_every_float_setting_must_be_finite(path, text):
    """A NaN passes every range check (each comparison is False) and lr=Infinity passes min_lr <= lr: each
    float field is checked finite, from the command line's JSON and from Python alike."""
    key, value = parse_override(f"{path}={text}")
    with pytest.raises(ConfigError, match=f"{path}=.*not a finite number"):
        RunConfig().replace(**{key: value})
    import dataclasses

    section, name = path.split(".") if "." in path else (None, path)
    built = (dataclasses.replace(RunConfig(), **{section: dataclasses.replace(getattr(RunConfig(), section), **{name: value})})
             if section else dataclasses.replace(RunConfig(), **{name: value}))
    with pytest.raises(ConfigError, match="not a finite number"):
        built.validate()


def test_float_paths_cover_the_settings_of_the_issue():
    assert {"train.lr", "train.weight_decay", "train.grad_clip", "schedule.s_max"} <= set(_float_paths())


@pytest.mark.parametrize("d,match", [
    ({"train": {"lr": 2.0, "min_lr": 1e-4}}, r"lr <= 1"),  # lr=1e38 ended in torch's bare RuntimeError
    ({"train": {"lr": 0.01, "weight_decay": 100.0}}, r"lr \* train.weight_decay must be < 1"),
])
def test_learning_rate_and_weight_decay_in_range(d, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(d)


def test_non_finite_setting_on_the_command_line_is_a_clear_error(capsys):
    from mstlib import cli

    assert cli.main(["train", "--preset", "smoke", "--set", "train.lr=Infinity", "--set", "train.max_iters=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr=inf is not a finite number" in err
