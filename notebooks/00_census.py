# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The model: a census of GPT-2 124M
#
# The paper pretrains GPT-2 small as [nanoGPT](https://github.com/karpathy/nanoGPT) builds it: 12 blocks
# of width 768 with 12 attention heads, a context of 1024 tokens, GELU, no biases, no dropout, and the token
# embedding tied to the output layer (`lm_head`). This page counts its parameters by kind of layer, marks
# which matrices Mixed Sparsity Training makes sparse, and works out what one *dense* training step costs
# per token, so that the FLOP savings in the later chapters have a baseline.
#
# The counts come from building `mstlib.model.GPT` on PyTorch's `meta` device: every tensor has a shape
# but no storage, so the census of any size is instant and allocates nothing.

# %% tags=["parameters", "hide-cell"]
# Which model to count: a key of mstlib.config.MODEL_SIZES ("paper" is GPT-2 124M as the paper trains it;
# "mini" is the book's GPU scale, "smoke" the tiny CPU model of the tests).
model_size = "paper"
# Tokens per sequence for the attention term of the FLOP count; None means the model's context length.
seq_len = None

# %% tags=["hide-input"]
# Check the parameters before anything else, so a typo fails here with a message that says what to use.
from mstlib.config import MODEL_SIZES
from mstlib.config import model_size as lookup_model_size
from mstlib.errors import ConfigError
from mstlib.notebook import check_parameter_names

check_parameter_names()
cfg = lookup_model_size(model_size)  # ConfigError listing the valid names for an unknown size
T = cfg.block_size if seq_len is None else seq_len
if not (isinstance(T, int) and 1 <= T <= cfg.block_size):
    raise ConfigError(
        f"seq_len={seq_len!r} must be an integer in 1..{cfg.block_size} (the context of model size "
        f"{model_size!r}), or None for the full context"
    )
cfg

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue
from torch import nn

from mstlib.model import GPT

sns.set_theme(style="whitegrid", context="notebook")


def build_on_meta(config):
    """The GPT of ``config`` with shapes only (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return GPT(config)


# Layer kinds, recognised from nanoGPT's parameter names. An unknown name is an error, so that a change
# to the model cannot silently drop parameters from this census.
KINDS = {
    "transformer.wte.weight": "token embedding = lm_head (tied)",
    "transformer.wpe.weight": "position embedding",
    "attn.c_attn.weight": "attention qkv",
    "attn.c_proj.weight": "attention proj",
    "mlp.c_fc.weight": "MLP fc",
    "mlp.c_proj.weight": "MLP proj",
    "ln_1.weight": "LayerNorm",
    "ln_2.weight": "LayerNorm",
    "transformer.ln_f.weight": "LayerNorm",
}


def kind_of(name: str) -> str:
    for suffix, kind in KINDS.items():
        if name.endswith(suffix):
            return kind
    raise KeyError(f"parameter {name!r} has no layer kind in this census; add it to KINDS")


def sparse_sets(model: nn.Module) -> dict[str, set[int]]:
    """Ids of the weight tensors each sparse set of `mstlib.config.SparsityConfig` makes sparse.

    ``all`` (the official code): the weight of every ``nn.Linear``, which includes ``lm_head`` and so the
    token embedding tied to it. ``blocks``: only the Linear layers inside the transformer blocks.
    """
    linear = {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return {
        "all": {id(w) for w in linear.values()},
        "blocks": {id(w) for name, w in linear.items() if name.startswith("transformer.h.")},
    }


def census(model: nn.Module) -> pd.DataFrame:
    """One row per layer kind: tensors, shape of one, parameters, and whether each sparse set covers it.
    ``named_parameters`` lists a tied tensor once, so the shared embedding/lm_head is counted once."""
    sets = sparse_sets(model)
    rows = [
        {
            "kind": kind_of(name),
            "shape": " x ".join(map(str, p.shape)),
            "parameters": p.numel(),
            "sparse (official: all)": id(p) in sets["all"],
            "sparse (blocks only)": id(p) in sets["blocks"],
        }
        for name, p in model.named_parameters()
    ]
    table = (
        pd.DataFrame(rows)
        .groupby("kind", sort=False)
        .agg(
            tensors=("parameters", "size"),
            shape=("shape", "first"),
            parameters=("parameters", "sum"),
            **{c: (c, "all") for c in ("sparse (official: all)", "sparse (blocks only)")},
        )
    )
    table["share of parameters"] = table["parameters"] / table["parameters"].sum()
    return table


model = build_on_meta(cfg)
table = census(model)
n_total = int(table["parameters"].sum())
# the census must account for every parameter exactly once
assert n_total == sum(p.numel() for p in model.parameters())

# %% [markdown]
# ## Parameters by kind of layer
#
# A row lists how many tensors of that kind the model has, the shape of one, and their parameters in
# total. The two last columns say whether each of MST's two sparse sets covers the kind: the official code
# makes every `Linear` weight sparse, and because `lm_head` is tied to the token embedding, the embedding is
# sparse too; the alternative keeps the embedding dense and sparsifies only the blocks. Position embeddings
# and LayerNorms are always dense.

# %% tags=["hide-input"]
YES_NO = {c: {True: "yes", False: "no"}.get for c in ("sparse (official: all)", "sparse (blocks only)")}
table.style.format({"parameters": "{:,}", "share of parameters": "{:.1%}", **YES_NO})

# %% tags=["remove-input"]
n_sparse = {
    key: int(table.loc[table[col], "parameters"].sum())
    for key, col in (("all", "sparse (official: all)"), ("blocks", "sparse (blocks only)"))
}
glue("n_layer", cfg.n_layer, display=False)
glue("n_embd", cfg.n_embd, display=False)
glue("n_params_total", n_total, display=False)
glue("n_params_sparse_all", n_sparse["all"], display=False)
glue("n_params_sparse_blocks", n_sparse["blocks"], display=False)
glue("share_sparse_all", 100 * n_sparse["all"] / n_total, display=False)
glue("share_sparse_blocks", 100 * n_sparse["blocks"] / n_total, display=False)

# %% [markdown]
# The model has {glue:text}`n_layer` blocks of width {glue:text}`n_embd` and
# {glue:text}`n_params_total:,` parameters (the tied embedding counted once). The official sparse set
# covers {glue:text}`n_params_sparse_all:,` of them
# ({glue:text}`share_sparse_all:.1f`%); the blocks alone hold {glue:text}`n_params_sparse_blocks:,`
# ({glue:text}`share_sparse_blocks:.1f`%).
#
# ## Dense training FLOPs per token
#
# nanoGPT reports model FLOPs utilisation with the estimate of the PaLM paper (appendix B): a training
# step costs $6N$ FLOPs per token for the weights (2 for the forward matrix product, 4 for the backward
# products that give the input and the weight gradients) plus $12 \cdot L \cdot d \cdot T$ for attention
# (the scores $QK^\top$ and the weighted sum of values, forward and backward, over a context of $T$ tokens
# in each of $L$ layers of width $d$). nanoGPT's $N$ is every parameter except the position embedding: the
# token embedding stays in, since as `lm_head` it is a real matrix product, and LayerNorm weights stay in
# by convention although they multiply nothing. We count the same way so that our numbers compare with
# nanoGPT's; the FLOP chapter counts sparse training exactly.

# %% tags=["hide-input"]
N = model.num_params(non_embedding=True)  # nanoGPT's N: all parameters minus the position embedding
attention_flops = 12 * cfg.n_layer * cfg.n_embd * T
flops_per_token = 6 * N + attention_flops

# the same total, split by where it is spent (6 FLOPs per parameter and token, plus attention)
flops = (
    table.drop(index="position embedding")
    .assign(**{"FLOPs per token": lambda t: 6 * t["parameters"]})[["FLOPs per token", "sparse (official: all)"]]
    .reset_index()
)
flops.loc[len(flops)] = ["attention scores and values", attention_flops, False]
flops["share"] = flops["FLOPs per token"] / flops["FLOPs per token"].sum()
assert flops["FLOPs per token"].sum() == flops_per_token

glue("N_nanogpt", N, display=False)
glue("seq_len", T, display=False)
glue("attention_flops", attention_flops, display=False)
glue("flops_per_token", flops_per_token, display=False)
glue("flops_share_sparse_all", 100 * 6 * n_sparse["all"] / flops_per_token, display=False)
glue("flops_share_attention", 100 * attention_flops / flops_per_token, display=False)
flops.style.format({"FLOPs per token": "{:,}", "share": "{:.1%}", "sparse (official: all)": YES_NO["sparse (official: all)"]}).hide(axis="index")

# %% tags=["hide-input"]
plot = flops.assign(
    **{
        "MFLOPs per token": flops["FLOPs per token"] / 1e6,
        "in MST": flops["sparse (official: all)"].map({True: "sparse (official set)", False: "always dense"}),
    }
).sort_values("MFLOPs per token", ascending=False)
fig, ax = plt.subplots(figsize=(8, 3.8))
sns.barplot(
    data=plot,
    x="MFLOPs per token",
    y="kind",
    hue="in MST",
    dodge=False,
    palette={"sparse (official set)": "tab:orange", "always dense": "tab:gray"},
    ax=ax,
)
ax.set(
    xlabel="dense training MFLOPs per token (6N + 12·L·d·T convention)",
    ylabel="",
    title=f"Where a dense training step of the {model_size!r} model spends its FLOPs",
)
ax.legend(title=None, loc="lower right", frameon=True)
fig.tight_layout()
plt.show()

# %% [markdown]
# With $N$ = {glue:text}`N_nanogpt:,` and $T$ = {glue:text}`seq_len` tokens, one token of dense training
# costs {glue:text}`flops_per_token:,` FLOPs. Attention's products are
# {glue:text}`flops_share_attention:.1f`% of that: MST's sparse weights cannot touch them, which is why
# the paper adds hybrid sparse attention. The matrices of the official sparse set carry
# {glue:text}`flops_share_sparse_all:.1f`%, the most weight sparsity alone could remove.
#
# ## Across the book's model sizes
#
# The same census for every size in `mstlib.config.MODEL_SIZES`. At small width the tied embedding, whose
# size is fixed by the vocabulary, holds a much larger share of the model, so whether it is sparse (the
# official set) or dense (blocks only) matters more at our scale than at the paper's.

# %% tags=["hide-input"]
def summary(name: str, config) -> dict:
    m = build_on_meta(config)
    t = census(m)
    total = int(t["parameters"].sum())
    n = m.num_params(non_embedding=True)
    return {
        "model size": name,
        "layers x width (heads), context": f"{config.n_layer} x {config.n_embd} ({config.n_head}), {config.block_size}",
        "parameters": total,
        "sparse, official set": t.loc[t["sparse (official: all)"], "parameters"].sum() / total,
        "sparse, blocks only": t.loc[t["sparse (blocks only)"], "parameters"].sum() / total,
        "embedding share": t.loc["token embedding = lm_head (tied)", "parameters"] / total,
        "dense FLOPs per token": 6 * n + 12 * config.n_layer * config.n_embd * config.block_size,
    }


sizes = pd.DataFrame([summary(name, c) for name, c in MODEL_SIZES.items()]).set_index("model size")
sizes.style.format(
    {
        "parameters": "{:,}",
        "sparse, official set": "{:.1%}",
        "sparse, blocks only": "{:.1%}",
        "embedding share": "{:.1%}",
        "dense FLOPs per token": "{:,}",
    }
)
