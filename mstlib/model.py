"""The GPT of nanoGPT (GPT-2 architecture as the paper trains it), with a pluggable attention pattern.

Equal to nanoGPT's ``model.py`` in everything that changes the numbers: pre-LayerNorm blocks, LayerNorm
without bias (eps 1e-5), exact GELU, no bias in any Linear, no dropout, learned position embeddings, the
token embedding tied to ``lm_head``, N(0, 0.02) initialisation with the residual projections (``c_proj``)
scaled by 1/sqrt(2 * n_layer). Submodule names are nanoGPT's (and so, up to Conv1D's transposition,
Hugging Face's ``GPT2LMHeadModel``'s), so weights move between the three.

Differences, each on purpose:
* ``forward`` returns logits for every position also without targets (evaluation needs them).
* Each attention layer has an ``pattern`` slot: ``None`` is plain causal SDPA (nanoGPT's flash path);
  otherwise a callable ``(q, k, v) -> y`` from :mod:`mstlib.attention` (hybrid sparse attention).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import ModelConfig
from .errors import CheckpointError

#: ``(q, k, v) -> y`` with q, k, v, y of shape (batch, heads, tokens, head_dim).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (PyTorch's own cannot drop only the bias before 2.1)."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.pattern: Optional[AttentionFn] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hd = C // self.n_head
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        if self.pattern is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = self.pattern(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 as nanoGPT builds it. ``forward(idx[B, T], targets[B, T] | None) -> (logits[B, T, V], loss)``;
    the loss is the mean next-token cross-entropy in nats (targets equal to -1 are ignored)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying, as GPT-2 and nanoGPT: one tensor is both the embedding and the output layer
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------------------------ forward
    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, *, return_logits: bool = True
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(logits [B, T, vocab], loss)``; ``loss`` is ``None`` without ``targets``.

        ``return_logits=False`` (with ``targets``): ``(None, loss)``, which training uses. The logits are the
        largest tensor of a step (``B * T * vocab``: 3.3 GB in bf16 at 32K tokens per step). Returned from a
        compiled model, they are an output that requires grad, so its backward takes a gradient for them as
        well as for the loss. When the caller never uses them, that gradient is a materialised zero tensor
        of their size, filled and then read by the loss's backward. Under CUDA graphs it is also copied into
        the graph's static input (measured on an H200, mini model: 0.97 ms of fills and 1.54 ms of copies
        per step, ``results/bench/archive/step_times_mini_session7a_*.json``). The loss and every gradient are the same
        either way: the zero gradient only ever adds 0.
        """
        if not return_logits and targets is None:
            raise ValueError("return_logits=False returns only the loss: pass targets")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.config.block_size}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

    # ----------------------------------------------------------------------------------- helpers
    def set_attention(self, pattern: Optional[AttentionFn], layers: Iterable[int] = ()) -> None:
        """Use ``pattern`` in the given blocks (all when ``layers`` is empty); ``None`` restores causal."""
        chosen = set(layers) or set(range(self.config.n_layer))
        for i, block in enumerate(self.transformer.h):
            block.attn.pattern = pattern if i in chosen else None

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted as nanoGPT counts them: the tied wte/lm_head once, and with
        ``non_embedding`` the position embedding left out (the token embedding stays, being lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n


def load_state_dict_checked(model: GPT, state: dict, source: str) -> None:
    """``load_state_dict`` with a CheckpointError naming every mismatch (compiled models prefix keys with
    ``_orig_mod.``, which is stripped)."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        raise CheckpointError(
            f"{source} does not match the model config: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shapes[:5]]}"
        )
    model.load_state_dict(state)


def to_huggingface(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` holding the same weights (``transformers`` must be installed).

    GPT-2's Conv1D stores (in, out) where nanoGPT's Linear stores (out, in), so those weights are
    transposed; HF's LayerNorms have biases, set to 0; HF's default GELU is the tanh approximation, so the
    export asks for the exact ``"gelu"``; the vocabulary stays ``vocab_size`` (50304: the 47 padding rows are
    never produced by the tokenizer).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_cfg = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(hf_cfg)
    ours = {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        sd = hf.state_dict()
        for k in sd:
            if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
                continue  # HF's causal-mask buffers in older versions
            if k.endswith(".bias"):
                sd[k].zero_()
                continue
            src = ours[k]
            sd[k].copy_(src.t() if k.endswith(transposed) else src)
        hf.load_state_dict(sd)
    return hf.eval()
