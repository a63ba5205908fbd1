"""Configs as tables: the hyperparameter tables of the book (the paper's Tables 4-8) rendered from
:class:`~mstlib.config.RunConfig` objects, so a table can never disagree with what the runs used.

:func:`config_table` flattens the config sections of several runs into one :class:`pandas.DataFrame`, a row
per setting with a human-readable name and unit, a column per run. Settings a run does not read (the MST
phase lengths of a constant-sparsity run, the topology of a dense run, the attention window of dense
attention) are shown as ``"—"`` rather than as a misleading number; rows no run reads are left out unless
asked for. A few derived rows (sequences and tokens per optimizer step, training tokens) follow their
section.

:func:`with_paper_column` adds the column "paper (Table N)": the value for the settings the paper documents
(nanoGPT's public Table 4 values and the GPT-2 small architecture, see ``PAPER_DOCUMENTED``), rendered from
our ``paper`` preset's config, and ``"not available"`` for every other setting: the paper's own values for
its Tables 5-8 are unknown to us, and we never fill them in by guess.

Numbers for people, for every table of the book: :func:`number` (3-4 significant digits, thousands
separators, ``1.36e16`` only for magnitudes that need it), :func:`mean_pm` (a mean with its 95% half-width,
the mean rounded to the half-width's precision and no ``±`` where the seeds agree exactly) and
:func:`style` (a DataFrame's numeric cells through :func:`number`, for display).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .config import RunConfig
from .errors import ConfigError

__all__ = [
    "FieldInfo",
    "FIELDS",
    "DERIVED",
    "SECTION_TITLES",
    "SKIPPED",
    "config_keys",
    "PAPER_DOCUMENTED",
    "NOT_USED",
    "NOT_AVAILABLE",
    "format_value",
    "config_table",
    "with_paper_column",
    "display",
    "number",
    "mean_pm",
    "style",
]

#: cell text for a setting the run does not read
NOT_USED = "—"
#: cell text where the paper's value would stand but is unknown to us
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class FieldInfo:
    """How one config setting is shown: ``label`` (human-readable name), ``unit`` ('' when none), and
    ``used(run) -> bool``: whether the run reads the setting at all."""

    label: str
    unit: str = ""
    used: Callable[[RunConfig], bool] = lambda run: True


def _sparse(run: RunConfig) -> bool:
    return run.schedule.kind != "dense"


def _evolves(run: RunConfig) -> bool:
    # a constant schedule without growth is static sparse training: no topology updates at all
    return _sparse(run) and not (run.schedule.kind == "constant" and run.topology.growth == "none")


def _exchanges(run: RunConfig) -> bool:
    # growth "none" drops nothing for exchange, so the drop-fraction settings are not read
    return _evolves(run) and run.topology.growth != "none"


def _mst(run: RunConfig) -> bool:
    return run.schedule.kind == "mst"


def _hsa(run: RunConfig) -> bool:
    return run.attention.pattern != "dense" and run.attention.when != "never"


#: Every RunConfig setting the tables show, by dotted key, in display order within its section.
FIELDS: dict[str, FieldInfo] = {
    # model
    "model.n_layer": FieldInfo("layers", "blocks"),
    "model.n_head": FieldInfo("attention heads", "per layer"),
    "model.n_embd": FieldInfo("width (embedding size)", "features"),
    "model.block_size": FieldInfo("context length", "tokens"),
    "model.vocab_size": FieldInfo("vocabulary (padded)", "tokens"),
    # train
    "train.max_iters": FieldInfo("training steps", "optimizer steps"),
    "train.batch_size": FieldInfo("micro-batch", "sequences per process"),
    "train.grad_accum": FieldInfo("gradient accumulation", "micro-steps (all processes)"),
    "train.lr": FieldInfo("peak learning rate (AdamW)"),
    "train.min_lr": FieldInfo("minimum learning rate (end of cosine)"),
    "train.warmup_iters": FieldInfo("learning-rate warm-up", "optimizer steps"),
    "train.lr_decay_iters": FieldInfo("cosine decay ends at", "optimizer steps"),
    "train.beta1": FieldInfo("AdamW β1"),
    "train.beta2": FieldInfo("AdamW β2"),
    "train.weight_decay": FieldInfo("weight decay"),
    "train.grad_clip": FieldInfo("gradient clipping", "global L2 norm"),
    "train.dtype": FieldInfo("compute precision"),
    "train.compile": FieldInfo("torch.compile"),
    "train.eval_interval": FieldInfo("validation every", "optimizer steps"),
    "train.eval_iters": FieldInfo("validation batches", "micro-batches"),
    # data
    "data.corpus": FieldInfo("pretraining corpus"),
    # sparsity
    "sparsity.sparse_set": FieldInfo("sparse weights", used=_sparse),
    "sparsity.distribution": FieldInfo("density across layers", used=_sparse),
    "sparsity.init": FieldInfo("initial mask", used=_sparse),
    # schedule
    "schedule.kind": FieldInfo("sparsity schedule"),
    "schedule.sparsity": FieldInfo("constant sparsity", "fraction of sparse set",
                                   used=lambda r: r.schedule.kind == "constant"),
    "schedule.s_max": FieldInfo("peak sparsity (ultra phase)", "fraction of sparse set", used=_mst),
    "schedule.s_end": FieldInfo("final sparsity (end of restoration)", "fraction of sparse set", used=_mst),
    "schedule.warmup_end": FieldInfo("warm-up phase ends", "fraction of training", used=_mst),
    "schedule.restore_start": FieldInfo("restoration phase starts", "fraction of training", used=_mst),
    "schedule.shape": FieldInfo("ramp shape", used=_mst),
    # topology
    "topology.growth": FieldInfo("growth criterion", used=_evolves),
    "topology.mix_gradient_fraction": FieldInfo(
        "grown by gradient (mixed growth)", "fraction of grown weights",
        used=lambda r: _evolves(r) and r.topology.growth == "mixed"),
    "topology.update_interval": FieldInfo("topology update every", "optimizer steps", used=_evolves),
    "topology.drop_fraction": FieldInfo("initial drop fraction", "fraction of active weights", used=_exchanges),
    "topology.drop_anneal": FieldInfo("drop-fraction schedule", used=_exchanges),
    "topology.restart_per_phase": FieldInfo(
        "drop-fraction anneal restarts each phase",
        used=lambda r: _exchanges(r) and r.topology.drop_anneal == "cosine"),
    "topology.stop_at": FieldInfo("topology updates stop at", "fraction of training", used=_evolves),
    "topology.skip_step_on_update": FieldInfo("skip optimizer step on update steps", used=_evolves),
    "topology.mask_optimizer_moments": FieldInfo("zero AdamW moments of pruned/grown weights", used=_evolves),
    # attention
    "attention.pattern": FieldInfo("attention pattern"),
    "attention.window": FieldInfo("local band width", "tokens",
                                  used=lambda r: _hsa(r) and r.attention.pattern in ("local", "local_strided", "fixed")),
    "attention.stride": FieldInfo("stride", "tokens",
                                  used=lambda r: _hsa(r) and r.attention.pattern in ("strided", "local_strided", "fixed")),
    "attention.when": FieldInfo("sparse attention used", used=lambda r: r.attention.pattern != "dense"),
    "attention.start": FieldInfo("sparse attention from", "fraction of training",
                                 used=lambda r: _hsa(r) and r.attention.when == "custom"),
    "attention.end": FieldInfo("sparse attention until", "fraction of training",
                               used=lambda r: _hsa(r) and r.attention.when == "custom"),
    "attention.layers": FieldInfo("layers with sparse attention", used=_hsa),
    "attention.backend": FieldInfo("attention kernel", used=_hsa),
}

#: Settings left out of the tables on purpose: where files go and how often to log, not what is trained.
SKIPPED: frozenset[str] = frozenset(
    {"train.log_interval", "train.checkpoint_interval", "data.data_dir"}
)

SECTION_TITLES: dict[str, str] = {
    "model": "model",
    "train": "optimisation",
    "data": "data",
    "sparsity": "sparse weights",
    "schedule": "sparsity variation",
    "topology": "topology evolution",
    "attention": "hybrid sparse attention",
}

#: Derived rows, shown after their section: key -> (section, label, unit, function of the run).
DERIVED: dict[str, tuple[str, str, str, Callable[[RunConfig], Any]]] = {
    "derived.sequences_per_step": (
        "train", "batch", "sequences per optimizer step",
        lambda r: r.train.batch_size * r.train.grad_accum),
    "derived.tokens_per_step": ("train", "batch", "tokens per optimizer step", lambda r: r.tokens_per_step()),
    "derived.training_tokens": (
        "train", "training tokens", "tokens", lambda r: r.tokens_per_step() * r.train.max_iters),
}

#: Settings whose value the paper documents (per the method notes, ``docs/mst-method.md``), with where.
#: Table 4 holds nanoGPT's public hyperparameters; the architecture is GPT-2 small as nanoGPT builds it.
#: Everything else (the paper's Tables 5-8) is unknown to us.
PAPER_DOCUMENTED: dict[str, str] = {
    "model.n_layer": "setup: GPT-2 small",
    "model.n_head": "setup: GPT-2 small",
    "model.n_embd": "setup: GPT-2 small",
    "model.block_size": "setup: GPT-2 small",
    "model.vocab_size": "setup: GPT-2 small",
    "train.max_iters": "Table 4 (the code's default run)",
    "train.lr": "Table 4",
    "train.min_lr": "Table 4",
    "train.warmup_iters": "Table 4",
    "train.beta1": "Table 4",
    "train.beta2": "Table 4",
    "train.weight_decay": "Table 4",
    "train.grad_clip": "Table 4",
    "train.dtype": "setup: bfloat16",
    "data.corpus": "setup: OpenWebText",
    "derived.sequences_per_step": "setup: 480 x 1024 tokens per step",
    "derived.tokens_per_step": "setup: 480 x 1024 tokens per step",
}


def _sig(x: float, digits: int = 4) -> str:
    """A float with up to ``digits`` significant digits, trailing zeros removed; scientific notation
    (``6e-4``) for small and large magnitudes, as hyperparameter tables write learning rates."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) < 1e-2 or abs(x) >= 1e6:
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{x:.{digits}g}"


def format_value(key: str, value: Any) -> str:
    """The cell text of ``value`` for setting ``key``: integers with thousands separators, floats to 4
    significant digits, booleans as yes/no, ``attention.layers`` ``()`` as "all", and
    ``train.lr_decay_iters`` 0 as "= training steps" (its meaning: decay over the whole run)."""
    if key == "train.lr_decay_iters" and value == 0:
        return "= training steps"
    if key == "attention.layers":
        return "all" if not value else ", ".join(str(i) for i in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _sig(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(key, v) for v in value)
    return str(value)


def _get(run: RunConfig, key: str) -> Any:
    node: Any = run
    for part in key.split("."):
        node = getattr(node, part)
    return node


def config_keys() -> list[str]:
    """Every leaf setting of RunConfig's sections (``model.n_layer``, ...): ``FIELDS`` and ``SKIPPED``
    together must cover them, so a setting added to the config cannot silently miss the tables."""
    out = []
    for f in fields(RunConfig):
        default = getattr(RunConfig(), f.name)
        if is_dataclass(default):
            out.extend(f"{f.name}.{g.name}" for g in fields(default))
    return out


def config_table(
    runs: Mapping[str, RunConfig],
    sections: Sequence[str] | None = None,
    *,
    derived: bool = True,
    show_unused: bool = False,
    only_differing: bool = False,
) -> pd.DataFrame:
    """One row per setting, one column per run (the keys of ``runs``, in order).

    ``sections``: which config sections to show, in this order (default: all, in ``SECTION_TITLES``
    order); a name not in ``SECTION_TITLES`` is a ConfigError. Rows are indexed by the dotted config key
    (``train.lr``; derived rows ``derived.*``) and carry the columns ``section`` (its title), ``setting``
    (human-readable) and ``unit``, then one text column per run. A setting a run does not read shows
    ``NOT_USED``; rows no run reads are dropped unless ``show_unused``. ``only_differing`` keeps only rows
    whose cells differ between the runs (used to show what a baseline changes).
    """
    if not runs:
        raise ConfigError("config_table needs at least one run, got none")
    names = list(runs)
    for name, run in runs.items():
        if not isinstance(run, RunConfig):
            raise ConfigError(f"config_table: run {name!r} is a {type(run).__name__}, not a RunConfig")
    order = list(SECTION_TITLES) if sections is None else list(sections)
    unknown = [s for s in order if s not in SECTION_TITLES]
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; choose from {list(SECTION_TITLES)}")

    rows: list[dict[str, Any]] = []
    for section in order:
        keys = [k for k in FIELDS if k.split(".")[0] == section]
        for key in keys:
            info = FIELDS[key]
            cells = {
                n: format_value(key, _get(r, key)) if info.used(r) else NOT_USED for n, r in runs.items()
            }
            if not show_unused and all(c == NOT_USED for c in cells.values()):
                continue
            rows.append({"key": key, "section": SECTION_TITLES[section], "setting": info.label,
                         "unit": info.unit, **cells})
        if derived:
            for key, (sec, label, unit, fn) in DERIVED.items():
                if sec == section:
                    cells = {n: format_value(key, fn(r)) for n, r in runs.items()}
                    rows.append({"key": key, "section": SECTION_TITLES[section], "setting": label,
                                 "unit": unit, **cells})
    table = pd.DataFrame(rows, columns=["key", "section", "setting", "unit", *names]).set_index("key")
    if only_differing and len(names) > 1:
        table = table[table[names].nunique(axis=1) > 1]
    return table


def with_paper_column(
    table: pd.DataFrame,
    paper: RunConfig,
    label: str,
    documented: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """``table`` (from :func:`config_table`) with two columns after ``unit``: ``"paper (<label>)"``, the
    value of each setting the paper documents rendered from ``paper`` (our ``paper`` preset's config),
    else ``NOT_AVAILABLE``; and ``"documented in"``, where the paper gives it (empty when it does not).

    ``documented`` maps dotted keys to their source (default ``PAPER_DOCUMENTED``, which describes the
    Dense GPT-2 small run of Table 4). Pass ``{}`` for a table whose values the paper does not give, e.g.
    Tiny's smaller model (Table 8), so GPT-2 small's documented sizes are not shown as Tiny's."""
    if not isinstance(paper, RunConfig):
        raise ConfigError(f"with_paper_column: paper must be a RunConfig, got {type(paper).__name__}")
    documented = PAPER_DOCUMENTED if documented is None else documented
    unknown = [k for k in documented if k not in FIELDS and k not in DERIVED]
    if unknown:
        raise ConfigError(f"with_paper_column: documented keys {unknown} are not table rows")
    derived = {k: fn for k, (_s, _l, _u, fn) in DERIVED.items()}
    values, sources = [], []
    for key in table.index:
        if key in documented:
            v = derived[key](paper) if key in derived else _get(paper, key)
            values.append(format_value(key, v))
            sources.append(documented[key])
        else:
            values.append(NOT_AVAILABLE)
            sources.append("")
    out = table.copy()
    at = list(out.columns).index("unit") + 1
    out.insert(at, f"paper ({label})", values)
    out.insert(at + 1, "documented in", sources)
    return out


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a notebook shows it: indexed by (section, setting), the dotted key dropped."""
    return table.reset_index(drop=True).set_index(["section", "setting"])


#: cell text of a number that is missing (not measured, not applicable)
MISSING = "–"


def _plain(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant digits in fixed notation (trailing zeros kept, so a column's
    numbers line up: 1.000 beside 0.958; large values rounded: 1,642,000)."""
    places = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{round(x, places):,.{max(0, places)}f}"


def _scientific(x: float, digits: int) -> str:
    mant, exp = f"{x:.{digits - 1}e}".split("e")
    if float(mant) == int(float(mant)):  # a round value reads as one: 6e-4, not 6.000e-4
        mant = mant.split(".")[0]
    return f"{mant}e{int(exp)}"


def number(x: Any, digits: int = 4) -> str:
    """A number as a table cell for people.

    Integers keep every digit, with thousands separators (``123,587,328``: counts are exact). Floats get
    ``digits`` significant digits: fixed notation from 0.001 up to a billion (``0.6838``, ``5.950``,
    ``96,910``, ``1,642,000``), ``1.360e16`` style outside that range, where fixed notation would be a row of zeros (a
    round mantissa alone: ``6e-4``).
    Missing values (None, NaN) are :data:`MISSING`; strings and booleans pass through."""
    if x is None or isinstance(x, str):
        return MISSING if x is None else x
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if not isinstance(x, numbers.Real):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return MISSING
    if x == 0 or math.isinf(x):
        return f"{x:g}"
    if 1e-3 <= abs(x) < 1e9:
        return _plain(x, digits)
    return _scientific(x, digits)


def mean_pm(mean: float, half_width: float | None = None, digits: int = 4) -> str:
    """``mean ± half_width`` written for people: the half-width to two significant digits and the mean
    rounded to the same decimal place (``5.957 ± 0.088``, ``96,900 ± 3,500``); just the mean, by
    :func:`number`, where there is no half-width or it is below the mean's ``digits`` significant digits
    (seeds that agree exactly give 3e-16 of float rounding, not an uncertainty)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    mean = float(mean)
    hw = float("nan") if half_width is None else abs(float(half_width))
    scale = abs(mean) if mean else 1.0
    if not math.isfinite(hw) or hw < scale * 10.0 ** (-digits):
        return number(mean, digits)
    place = math.floor(math.log10(hw)) - 1  # the decimal place of the half-width's second digit
    if abs(mean) >= 1e9 or hw < 1e-3:  # a shared power of ten, so neither side is a row of zeros
        exp = math.floor(math.log10(max(abs(mean), hw)))
        d = max(0, exp - place)
        return f"({mean / 10 ** exp:.{d}f} ± {hw / 10 ** exp:.{d}f})e{exp}"
    d = max(0, -place)
    return f"{round(mean, -place):,.{d}f} ± {round(hw, -place):,.{d}f}"


def style(table: pd.DataFrame, digits: int = 4, formats: Mapping[str, Callable[[Any], str]] | None = None,
          index: bool = True):
    """``table`` as the book shows it: every numeric cell through :func:`number` (``formats`` maps a
    column to its own formatter, e.g. a percentage), missing cells as :data:`MISSING`, the index left
    out unless ``index``. Returns a pandas Styler (the table's values stay numbers)."""
    fmt: dict[Any, Callable[[Any], str]] = {c: (lambda v, d=digits: number(v, d)) for c in table.columns}
    fmt.update(formats or {})
    styled = table.style.format(fmt)
    if table.index.nlevels == 1 and table.index.dtype.kind in "if":
        styled = styled.format_index(lambda v, d=digits: number(v, d))
    return styled if index else styled.hide(axis="index")
