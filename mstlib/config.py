"""Typed, validated configuration: the single source of truth for every run, table and notebook.

A run is a :class:`RunConfig`, a tree of frozen dataclasses. ``RunConfig.from_dict`` is strict: an unknown
key is a :class:`~mstlib.errors.ConfigError` that names the key and suggests the closest valid one (the
official MST code's ``config/mst.py`` set keys its training script never read, so it silently trained plain
RigL; this module exists so that cannot happen here). ``validate()`` rejects impossible values and
contradictions (sparsity outside [0, 1), overlapping phases, an attention window wider than the context).
Every float field must be finite: a comparison with NaN is always False, so a NaN would pass every range
check below it, and an infinite learning rate passes ``min_lr <= lr``.

Units: steps are optimizer iterations; training progress is a fraction of ``train.max_iters`` in [0, 1];
token counts are per optimizer step: ``batch_size * grad_accum * world_size * block_size``.

Presets and methods (``smoke``/``mini``/``paper`` x ``dense``/``mst``/``rigl``/``ss``/``tiny``/``set``) live in
:mod:`mstlib.presets`, because matching the baselines' FLOPs to MST needs :mod:`mstlib.flops`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from .errors import ConfigError
from .strict import apply_overrides, check_finite, check_literals, from_dict, parse_override, to_jsonable  # noqa: F401

# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """A nanoGPT GPT: ``n_layer`` blocks of width ``n_embd`` with ``n_head`` heads, context ``block_size``
    tokens, vocabulary ``vocab_size`` (GPT-2's 50257 rounded up to 50304 for efficiency, as nanoGPT)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304

    def validate(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )


#: Named model sizes. ``paper`` is GPT-2 small as the paper trains it (nanoGPT's defaults).
MODEL_SIZES: dict[str, ModelConfig] = {
    "paper": ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "mini": ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024),
    "smoke": ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64),
}


def model_size(name: str) -> ModelConfig:
    """The named model size, or a ConfigError that lists the valid names."""
    try:
        return MODEL_SIZES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model size {name!r}; choose one of {sorted(MODEL_SIZES)}"
        ) from None


# ------------------------------------------------------------------------------------------ sparsity

SparseSet = Literal["all", "blocks"]
Distribution = Literal["er", "uniform"]
MaskInit = Literal["random", "magnitude"]


@dataclass(frozen=True)
class SparsityConfig:
    """Which weights are sparse and how the global density is spread over them.

    ``sparse_set``: ``"all"`` is the official code's choice: every Linear weight of the blocks *and* the
    lm_head, which is tied to the token embedding (so the embedding is sparse too); ``"blocks"`` keeps the
    tied embedding/lm_head dense. Position embeddings and LayerNorms are always dense.
    ``distribution``: ``"er"`` (Erdos-Renyi, density proportional to (n_in + n_out) / (n_in * n_out),
    capped at dense; official) or ``"uniform"``. ``init``: the initial mask, ``"random"`` (official) or by
    weight ``"magnitude"``.
    """

    sparse_set: SparseSet = "all"
    distribution: Distribution = "er"
    init: MaskInit = "random"


# ---------------------------------------------------------------------------- sparsity variation (SV)

ScheduleKind = Literal["dense", "constant", "mst"]
RampShape = Literal["linear", "cosine", "cubic"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Global target sparsity as a function of training progress p in [0, 1].

    ``kind="dense"``: 0 throughout. ``kind="constant"``: ``sparsity`` throughout (RigL, SS, SET baselines).
    ``kind="mst"``: three phases (the paper's Sparsity Variation):

    * warm-up, p in [0, warmup_end): 0 ramps to ``s_max`` (``shape``);
    * ultra-sparsification, p in [warmup_end, restore_start): hold ``s_max``;
    * restoration, p in [restore_start, 1]: ``s_max`` ramps down to ``s_end``.

    The paper's phase lengths and peak sparsity are unknown to us; the defaults are ours, chosen so the
    analytic training-FLOP reduction at paper scale is about 4x (see :mod:`mstlib.flops` and the FLOP
    notebook for the arithmetic). Set the paper's values here if you have them.
    """

    kind: ScheduleKind = "mst"
    sparsity: float = 0.0
    s_max: float = 0.9
    s_end: float = 0.5
    warmup_end: float = 0.25
    restore_start: float = 0.75
    shape: RampShape = "cubic"

    def validate(self) -> None:
        for name in ("sparsity", "s_max", "s_end"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"schedule.{name} must be in [0, 1), got {v}")
        if self.kind == "mst":
            if not 0.0 <= self.warmup_end <= self.restore_start <= 1.0:
                raise ConfigError(
                    "schedule phases overlap or leave [0, 1]: need 0 <= warmup_end <= restore_start <= 1, "
                    f"got warmup_end={self.warmup_end}, restore_start={self.restore_start}"
                )
            if self.s_end > self.s_max:
                raise ConfigError(
                    f"schedule.s_end ({self.s_end}) above s_max ({self.s_max}): restoration must not prune"
                )
        if self.kind != "constant" and self.sparsity != 0.0:
            raise ConfigError(
                f"schedule.sparsity={self.sparsity} is only read when schedule.kind='constant' "
                f"(kind is {self.kind!r}); use s_max/s_end for 'mst'"
            )


# ---------------------------------------------------------------------------- topology evolution (TE)

Growth = Literal["gradient", "random", "mixed", "none"]
DropAnneal = Literal["cosine", "constant"]


@dataclass(frozen=True)
class TopologyConfig:
    """Topology evolution every ``update_interval`` steps: drop the smallest |w|, then grow.

    ``growth``: ``"gradient"`` (RigL, largest |dense gradient|), ``"random"`` (SET), ``"mixed"`` (our reading
    of the paper's "MG": ``mix_gradient_fraction`` of the grown connections by gradient, the rest at random;
    official default 3:1), ``"none"`` (static sparse training). ``drop_fraction`` is annealed from its initial
    value towards 0 by cosine over each phase when ``restart_per_phase`` (official), else over the whole run.
    ``stop_at``: no topology updates after this fraction of training (1.0 = never stop).
    ``skip_step_on_update``: the official code skips the optimizer step on update iterations.
    ``mask_optimizer_moments``: zero the AdamW moments of pruned and grown weights (ours, True). The
    official code never masks AdamW's moments, so a pruned weight's momentum keeps pushing it away from
    zero until the mask is re-applied; False reproduces that defect for the deviations ablation.
    """

    growth: Growth = "mixed"
    mix_gradient_fraction: float = 0.75
    update_interval: int = 100
    drop_fraction: float = 0.3
    drop_anneal: DropAnneal = "cosine"
    restart_per_phase: bool = True
    stop_at: float = 1.0
    skip_step_on_update: bool = True
    mask_optimizer_moments: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.mix_gradient_fraction <= 1.0:
            raise ConfigError(
                f"topology.mix_gradient_fraction must be in [0, 1], got {self.mix_gradient_fraction}"
            )
        if self.update_interval < 1:
            raise ConfigError(f"topology.update_interval must be >= 1, got {self.update_interval}")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError(f"topology.drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if not 0.0 <= self.stop_at <= 1.0:
            raise ConfigError(f"topology.stop_at must be in [0, 1], got {self.stop_at}")


# ------------------------------------------------------------------------ hybrid sparse attention (HSA)

AttentionPatternName = Literal["dense", "local", "strided", "local_strided", "fixed"]
AttentionWindow = Literal["ultra", "always", "never", "custom"]
AttentionBackend = Literal["auto", "flex", "flash_split", "cudnn_split", "split", "sdpa_mask"]


@dataclass(frozen=True)
class AttentionConfig:
    """Hybrid sparse attention: a Sparse-Transformer pattern used during a window of training.

    ``pattern``: ``"dense"`` (plain causal) or one of the official patterns, with band width ``window``
    and stride ``stride`` tokens (official 128). ``when``: ``"ultra"`` (the ultra-sparsification phase
    of the sparsity schedule; our default), ``"always"``, ``"never"`` or ``"custom"`` with
    [``start``, ``end``) as fractions of training. ``layers``: block indices that use the pattern
    (empty = all layers, official). ``backend``: ``"flex"`` (FlexAttention block masks, skips empty
    blocks), ``"split"`` (the pattern cut into a FlexAttention band and a strided/summary part computed
    as small dense products, merged by log-sum-exp: see :mod:`mstlib.attention`), ``"flash_split"`` (the
    same cut with a FlashAttention sliding-window band and Triton kernels for the strided part: see
    :mod:`mstlib.attention.flash_split`), ``"cudnn_split"`` (flash_split with the band through cuDNN's sliding
    window; ``local`` and ``local_strided``; needs ``nvidia-cudnn-frontend``), ``"sdpa_mask"`` (a dense
    boolean mask passed to SDPA: the official way, no savings), ``"auto"`` (on CUDA flash_split for
    ``local``, ``local_strided`` and ``strided``, flex for ``fixed``; sdpa_mask elsewhere: see
    :func:`mstlib.attention.resolve_backend`; a run records what it resolved to in its provenance).
    """

    pattern: AttentionPatternName = "dense"
    window: int = 128
    stride: int = 128
    when: AttentionWindow = "ultra"
    start: float = 0.0
    end: float = 1.0
    layers: tuple[int, ...] = ()
    backend: AttentionBackend = "auto"

    def validate(self, model: ModelConfig) -> None:
        if self.window < 1 or self.stride < 1:
            raise ConfigError(f"attention.window and stride must be >= 1, got {self.window}, {self.stride}")
        if self.pattern != "dense" and max(self.window, self.stride) > model.block_size:
            raise ConfigError(
                f"attention.window/stride ({self.window}/{self.stride}) larger than the context "
                f"model.block_size={model.block_size}"
            )
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ConfigError(
                f"attention window needs 0 <= start <= end <= 1, got start={self.start}, end={self.end}"
            )
        if self.when != "custom" and (self.start, self.end) != (0.0, 1.0):
            raise ConfigError("attention.start/end are only read when attention.when='custom'")
        bad = [i for i in self.layers if not 0 <= i < model.n_layer]
        if bad:
            raise ConfigError(f"attention.layers {bad} outside 0..{model.n_layer - 1}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"attention.layers has duplicates: {self.layers}")


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (nanoGPT's, the paper's Table 4). ``batch_size`` sequences per micro-step per process,
    ``grad_accum`` micro-steps per optimizer step (total over all processes: each DDP rank does
    ``grad_accum // world_size``, as nanoGPT). LR: linear warm-up for ``warmup_iters`` steps, cosine to
    ``min_lr`` at ``lr_decay_iters`` (0 means ``max_iters``).

    ``compile``: ``true`` runs ``torch.compile`` on CUDA (never on a CPU); ``"reduce-overhead"`` also replays
    the compiled forward and backward as CUDA graphs (one GPU, no DDP), which removes the host's per-kernel
    work where short steps leave the GPU waiting (the ``mini`` model with the split attention backends:
    :mod:`mstlib.benchmark`). The two modes run the same kernels and give the same numbers (a GPU test in
    ``tests/test_train.py``); ``true`` and ``false`` keep the run ids they had before the mode existed."""

    max_iters: int = 600_000
    batch_size: int = 12
    grad_accum: int = 40
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 2000
    lr_decay_iters: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: Literal[True, False, "reduce-overhead"] = True
    eval_interval: int = 2000
    eval_iters: int = 200
    log_interval: int = 10
    checkpoint_interval: int = 0

    def validate(self) -> None:
        for name in ("max_iters", "batch_size", "grad_accum", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "lr_decay_iters", "eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.min_lr <= self.lr <= 1.0:
            # AdamW moves every weight by about lr per step: above 1 no run learns (and above float32's
            # range torch fails with a bare RuntimeError)
            raise ConfigError(f"train needs 0 < min_lr <= lr <= 1, got min_lr={self.min_lr}, lr={self.lr}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"train.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
        if self.lr * self.weight_decay >= 1:
            # AdamW scales every decayed weight by (1 - lr * weight_decay) per step
            raise ConfigError(f"train.lr * train.weight_decay must be < 1 (AdamW multiplies the weights by "
                              f"1 - lr * weight_decay each step), got {self.lr} * {self.weight_decay}")
        if not any(self.compile is v for v in (True, False)) and self.compile != "reduce-overhead":
            # Literal[True, False, ...] also admits 1 and 0 (1 == True): say what is meant
            raise ConfigError(f"train.compile={self.compile!r} is not one of [True, False, 'reduce-overhead']")

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters


@dataclass(frozen=True)
class DataConfig:
    """Which prepared corpus (``data_dir/corpus/{train,val}.bin``) the run trains on."""

    corpus: str = "offline"
    data_dir: str = "data"


# -------------------------------------------------------------------------------------------- a run

Method = Literal["dense", "mst", "rigl", "ss", "tiny", "set"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result. Its :meth:`run_id` is a hash of all of it."""

    method: Method = "mst"
    preset: str = "custom"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Check every field and their contradictions; return self so calls chain."""
        check_literals(self)
        check_finite(self)
        self.model.validate()
        self.schedule.validate()
        self.topology.validate()
        self.attention.validate(self.model)
        self.train.validate()
        if self.schedule.kind == "dense" and self.topology.growth != "none":
            # a dense run has no topology; keep growth 'none' so the config says what happens
            raise ConfigError(
                "schedule.kind='dense' trains no masks; set topology.growth='none' (presets do this)"
            )
        if self.attention.when == "ultra" and self.attention.pattern != "dense" and self.schedule.kind != "mst":
            raise ConfigError(
                "attention.when='ultra' needs the MST sparsity schedule (schedule.kind='mst'); "
                "use when='always' or 'custom' for other schedules"
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        return self

    @property
    def is_sparse(self) -> bool:
        return self.schedule.kind != "dense"

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Build and validate a RunConfig; unknown keys are errors."""
        return from_dict(cls, d, "").validate()

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with dotted-path changes, e.g. ``cfg.replace(**{"train.max_iters": 10, "seed": 1})``."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), changes))

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def run_id(self) -> str:
        """12 hex digits of the sha256 of the canonical JSON: stable across processes and versions of
        Python, changes whenever any field that can change the result changes."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.grad_accum * self.model.block_size
