"""Tests of mstlib.tables: configs rendered as hyperparameter tables."""

from __future__ import annotations

import pytest

from mstlib import tables
from mstlib.config import MODEL_SIZES, RunConfig
from mstlib.errors import ConfigError


def _dense() -> RunConfig:
    return RunConfig.from_dict({
        "method": "dense", "schedule": {"kind": "dense"}, "topology": {"growth": "none"},
    })


def _rigl(sparsity: float = 0.8) -> RunConfig:
    return RunConfig.from_dict({
        "method": "rigl", "schedule": {"kind": "constant", "sparsity": sparsity},
        "topology": {"growth": "gradient"},
    })


def _ss() -> RunConfig:
    return RunConfig.from_dict({
        "method": "ss", "schedule": {"kind": "constant", "sparsity": 0.7}, "topology": {"growth": "none"},
    })


def _mst() -> RunConfig:
    return RunConfig.from_dict({"method": "mst", "attention": {"pattern": "local_strided", "window": 64}})


def test_fields_cover_every_config_setting():
    # a field added to the config must be shown or skipped on purpose, never silently missing
    keys = set(tables.config_keys())
    assert keys == set(tables.FIELDS) | tables.SKIPPED
    assert not set(tables.FIELDS) & tables.SKIPPED
    for key in tables.PAPER_DOCUMENTED:
        assert key in tables.FIELDS or key in tables.DERIVED


def test_values_and_columns_come_from_the_configs():
    small = RunConfig(model=MODEL_SIZES["smoke"])
    t = tables.config_table({"paper": RunConfig(), "smoke": small})
    assert list(t.columns) == ["section", "setting", "unit", "paper", "smoke"]
    assert t.loc["model.n_layer", "paper"] == "12"
    assert t.loc["model.n_layer", "smoke"] == "2"
    assert t.loc["model.block_size", "unit"] == "tokens"
    assert t.loc["train.lr", "paper"] == "6e-4"
    assert t.loc["train.min_lr", "paper"] == "6e-5"
    assert t.loc["train.max_iters", "paper"] == "600,000"
    assert t.loc["train.weight_decay", "paper"] == "0.1"
    assert t.loc["train.lr_decay_iters", "paper"] == "= training steps"
    # derived rows: 12 x 40 sequences of 1024 tokens per step
    assert t.loc["derived.sequences_per_step", "paper"] == "480"
    assert t.loc["derived.tokens_per_step", "paper"] == "491,520"
    assert t.loc["derived.training_tokens", "paper"] == f"{491_520 * 600_000:,}"
    assert t.loc["derived.tokens_per_step", "smoke"] == f"{12 * 40 * 64:,}"
    # derived rows follow their section
    idx = list(t.index)
    assert idx.index("derived.tokens_per_step") > idx.index("train.max_iters")
    assert idx.index("derived.tokens_per_step") < idx.index("data.corpus")


def test_settings_a_run_does_not_read_are_not_shown_as_numbers():
    t = tables.config_table({"dense": _dense(), "rigl": _rigl(), "ss": _ss(), "mst": _mst()})
    # the MST phase lengths mean nothing for a constant schedule or a dense run
    assert t.loc["schedule.s_max", "mst"] == "0.9"
    assert t.loc["schedule.s_max", "rigl"] == tables.NOT_USED
    assert t.loc["schedule.s_max", "dense"] == tables.NOT_USED
    assert t.loc["schedule.sparsity", "rigl"] == "0.8"
    assert t.loc["schedule.sparsity", "mst"] == tables.NOT_USED
    # static sparse training has no topology updates; RigL does
    assert t.loc["topology.update_interval", "ss"] == tables.NOT_USED
    assert t.loc["topology.update_interval", "rigl"] == "100"
    assert t.loc["topology.growth", "dense"] == tables.NOT_USED
    # the mixed-growth share is only read for mixed growth
    assert t.loc["topology.mix_gradient_fraction", "mst"] == "0.75"
    assert t.loc["topology.mix_gradient_fraction", "rigl"] == tables.NOT_USED
    # attention window only where a sparse pattern is used
    assert t.loc["attention.window", "mst"] == "64"
    assert t.loc["attention.window", "dense"] == tables.NOT_USED
    assert t.loc["attention.layers", "mst"] == "all"


def test_rows_no_run_reads_are_dropped_unless_asked():
    t = tables.config_table({"dense": _dense()})
    assert "schedule.s_max" not in t.index
    assert "topology.growth" not in t.index
    assert "attention.window" not in t.index
    full = tables.config_table({"dense": _dense()}, show_unused=True)
    assert full.loc["schedule.s_max", "dense"] == tables.NOT_USED
    assert set(full.index) >= set(tables.FIELDS)


def test_sections_filter_order_and_only_differing():
    t = tables.config_table({"a": _rigl(0.8), "b": _rigl(0.6)}, ["schedule", "model"], derived=False)
    assert [k.split(".")[0] for k in t.index] == sorted(
        [k.split(".")[0] for k in t.index], key=["schedule", "model"].index
    )
    d = tables.config_table({"a": _rigl(0.8), "b": _rigl(0.6)}, only_differing=True)
    assert list(d.index) == ["schedule.sparsity"]
    with pytest.raises(ConfigError, match="unknown config sections"):
        tables.config_table({"a": _rigl()}, ["trian"])
    with pytest.raises(ConfigError, match="at least one run"):
        tables.config_table({})
    with pytest.raises(ConfigError, match="not a RunConfig"):
        tables.config_table({"a": {"method": "mst"}})  # type: ignore[dict-item]


def test_paper_column_shows_documented_values_only():
    t = tables.config_table({"ours": RunConfig(model=MODEL_SIZES["mini"])})
    p = tables.with_paper_column(t, RunConfig(), "Table 4")
    assert list(p.columns)[:5] == ["section", "setting", "unit", "paper (Table 4)", "documented in"]
    assert p.loc["train.lr", "paper (Table 4)"] == "6e-4"
    assert p.loc["train.lr", "documented in"] == "Table 4"
    assert p.loc["model.n_embd", "paper (Table 4)"] == "768"
    assert p.loc["derived.sequences_per_step", "paper (Table 4)"] == "480"
    # not documented: the paper's own values are unknown, never guessed
    for key in ("schedule.s_max", "topology.update_interval", "train.batch_size", "train.compile"):
        assert p.loc[key, "paper (Table 4)"] == tables.NOT_AVAILABLE
        assert p.loc[key, "documented in"] == ""
    # the value is rendered from the config given, not typed in
    other = RunConfig().replace(**{"train.lr": 1e-3})
    assert tables.with_paper_column(t, other, "x").loc["train.lr", "paper (x)"] == "1e-3"
    # the run's own column is untouched
    assert p.loc["model.n_embd", "ours"] == "384"


def test_paper_column_with_nothing_documented():
    t = tables.config_table({"ours": RunConfig()}, ["model"])
    p = tables.with_paper_column(t, RunConfig(), "Table 8", documented={})
    assert (p["paper (Table 8)"] == tables.NOT_AVAILABLE).all()
    assert (p["documented in"] == "").all()
    with pytest.raises(ConfigError, match="not table rows"):
        tables.with_paper_column(t, RunConfig(), "x", documented={"train.lrr": "Table 4"})


def test_display_index():
    d = tables.display(tables.config_table({"x": RunConfig()}, ["model"]))
    assert d.index.names == ["section", "setting"]
    assert ("model", "layers") in d.index


@pytest.mark.parametrize(
    "key,value,text",
    [
        ("train.lr", 6e-4, "6e-4"),
        ("train.lr", 1.5e-4, "1.5e-4"),
        ("train.beta2", 0.95, "0.95"),
        ("schedule.s_max", 0.9, "0.9"),
        ("schedule.sparsity", 0.8123456, "0.8123"),
        ("train.max_iters", 600000, "600,000"),
        ("train.compile", True, "yes"),
        ("topology.restart_per_phase", False, "no"),
        ("attention.layers", (0, 1, 5), "0, 1, 5"),
        ("data.corpus", "offline", "offline"),
        ("train.grad_clip", 0.0, "0"),
    ],
)
def test_format_value(key, value, text):
    assert tables.format_value(key, value) == text


def test_paper_preset_agrees_with_the_documented_values():
    """Our paper preset must carry the values the paper documents (method notes, Table 4 and setup);
    the book's Table 4 column is rendered from it."""
    presets = pytest.importorskip("mstlib.presets")
    for method in ("dense", "mst"):
        run = presets.make("paper", method)
        assert (run.model.n_layer, run.model.n_head, run.model.n_embd) == (12, 12, 768)
        assert (run.model.block_size, run.model.vocab_size) == (1024, 50304)
        t = run.train
        assert (t.lr, t.min_lr, t.warmup_iters, t.max_iters) == (6e-4, 6e-5, 2000, 600_000)
        assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (0.9, 0.95, 0.1, 1.0)
        assert t.batch_size * t.grad_accum == 480
        assert t.dtype == "bfloat16" and run.data.corpus == "openwebtext"


# ------------------------------------------------------------------------------ numbers for people


@pytest.mark.parametrize("value, text", [
    (123_587_328, "123,587,328"),  # a count keeps every digit
    (0.6838123, "0.6838"), (5.95, "5.950"), (431.234, "431.2"), (-0.0233, "-0.02330"),
    (96_910.4, "96,910"), (530_292.17, "530,300"), (1_642_318.0, "1,642,000"),
    (2.521e20, "2.521e20"), (1.36e16, "1.360e16"), (6e-4, "6e-4"), (3e20, "3e20"), (0.001035, "0.001035"),
    (0, "0"), (float("nan"), "–"), (None, "–"), ("not measured", "not measured"),
])
def test_number_is_written_for_people(value, text):
    import numpy as np

    assert tables.number(value) == text
    if isinstance(value, int):
        assert tables.number(np.int64(value)) == text
    assert "e+" not in tables.number(value)


@pytest.mark.parametrize("mean, half, text", [
    (5.957, 0.08813, "5.957 ± 0.088"),
    (96_910, 3_524, "96,900 ± 3,500"),
    (431.2, 23.24, "431 ± 23"),
    (0.001035, 0.00155, "0.0010 ± 0.0015"),
    (2.5e20, 3e18, "(2.500 ± 0.030)e20"),
    # seeds that agree exactly: float rounding is not an uncertainty, and an exact value has no ±
    (0.6838, 3.331e-16, "0.6838"), (2.5e20, 1.5, "2.500e20"), (0.5, 0.0, "0.5000"), (0.527, None, "0.5270"),
])
def test_mean_pm_rounds_the_mean_to_its_interval_and_drops_a_zero_interval(mean, half, text):
    assert tables.mean_pm(mean, half) == text


def test_style_formats_every_numeric_cell():
    import pandas as pd

    t = pd.DataFrame({"tokens": [393_216_000, 1_000], "loss": [5.95712, float("nan")], "name": ["a", "b"]})
    html = tables.style(t, index=False).to_html()
    assert "393,216,000" in html and "5.957" in html and "–" in html and "e+" not in html
    assert "5.95712" not in html
