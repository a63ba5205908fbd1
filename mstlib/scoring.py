"""The measurements evaluation is made of: the settings, batched model calls in eval mode, perplexity over
sliding windows, and log-likelihood scores of continuations. Units: nats per token unless stated."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Sequence

import torch
import torch.nn as nn

# the text bar: tqdm.auto warns in a kernel without ipywidgets, and that warning lands in a page
from tqdm import tqdm

from .data import evalsets
from .data.tokenizer import EOT as _TOKENIZER_EOT
from .data.tokenizer import get_encoding
from .errors import ConfigError, MstError

EOT = _TOKENIZER_EOT  # GPT-2's <|endoftext|>, 50256


# ------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``None`` for ``context``/``stride`` means: the model's ``block_size`` / half of it."""

    context: Optional[int] = None  # tokens per window (and the most a LAMBADA/GLUE prompt may use)
    stride: Optional[int] = None  # tokens a perplexity window moves; each window scores at most this many new
    batch_size: int = 8  # sequences per forward pass
    k_shot: int = 4  # demonstrations per GLUE prompt. The paper's k is unknown to us; in 1024 tokens k=4 fits
    # every RTE and MRPC dev prompt whole (k=8: all but one RTE prompt; k=16: few), checked with seed 1234
    seed: int = 1234  # picks the demonstrations
    split: Literal["test", "valid"] = "test"  # perplexity split (1BW has only test)
    max_examples: Optional[int] = None  # LAMBADA / GLUE: score only the first N (smoke runs)
    max_tokens: Optional[int] = None  # perplexity sets: score only the first lines within N BPE tokens
    mrpc_variant: Literal["glue", "msi"] = "glue"
    source: Literal["local", "hub"] = "local"
    eval_dir: Optional[str] = None  # None: $MST_EVAL_DIR, else <shared>/data/eval
    progress: bool = True  # tqdm bars
    cuda_bf16: bool = True  # bf16 autocast on CUDA (False: float32 there too); CPU is always float32


def default_encoding() -> Any:
    return get_encoding()


# ------------------------------------------------------------------------------------ model calls
class Runner:
    """Calls the model: right device, autocast, and float32 logits over the tokenizer's vocabulary."""

    def __init__(self, model: nn.Module, n_vocab: int, bf16: bool = True) -> None:
        self.model = model
        self.n_vocab = n_vocab
        self.bf16 = bf16
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx[B, T]`` -> float32 logits ``[B, T, n_vocab]``."""
        idx = idx.to(self.device)
        with self.autocast():
            out = self.model(idx)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(idx.shape):
            raise MstError(
                f"the model returned logits of shape {tuple(logits.shape)} for input {tuple(idx.shape)}; "
                "evaluation needs logits for every position, [batch, tokens, vocab]"
            )
        if logits.shape[-1] < self.n_vocab:
            raise MstError(f"the model's vocabulary ({logits.shape[-1]}) is smaller than GPT-2's ({self.n_vocab})")
        return logits[..., : self.n_vocab].float()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------- perplexity
def window_plan(n_targets: int, context: int, stride: int) -> list[tuple[int, int]]:
    """Sliding windows over ``n_targets`` predicted tokens: a list of ``(begin, n_new)``.

    With ``ids`` the token stream (``len(ids) == n_targets + 1``), window ``(b, n)`` feeds
    ``ids[b : b + L]`` (``L = min(context, n_targets)``), predicts ``ids[b + 1 : b + L + 1]`` and scores the
    last ``n`` of them. Every target is scored exactly once."""
    if context < 1 or not 1 <= stride <= context:
        raise ConfigError(f"need context >= 1 and 1 <= stride <= context, got context={context}, stride={stride}")
    length = min(context, n_targets)
    plan: list[tuple[int, int]] = []
    scored = 0  # targets 0..scored-1 are done
    begin = 0
    while scored < n_targets:
        begin = min(begin, n_targets - length)  # the last window ends at the last target
        end = begin + length
        plan.append((begin, end - scored))
        scored = end
        begin += stride
    return plan


def sliding_window_nll(
    model: nn.Module,
    ids: Sequence[int],
    context: int,
    stride: int,
    batch_size: int = 8,
    n_vocab: int = 50257,
    progress: bool = False,
    desc: str = "perplexity",
    bf16: bool = True,
) -> tuple[float, int, int]:
    """Total NLL (nats) of ``ids[1:]`` given what precedes them, by sliding windows (see
    :func:`window_plan`). Returns ``(nll, n_scored_tokens, n_windows)``."""
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    n_targets = len(ids_t) - 1
    if n_targets < 1:
        raise MstError("nothing to score: the token stream has fewer than 2 tokens")
    plan = window_plan(n_targets, context, stride)
    length = min(context, n_targets)
    runner = Runner(model, n_vocab, bf16)
    nll = torch.zeros((), dtype=torch.float64)
    n_scored = 0
    bar = tqdm(total=n_targets, desc=desc, unit="tok", disable=not progress, leave=False)
    with eval_mode(model):
        for start in range(0, len(plan), batch_size):
            chunk = plan[start : start + batch_size]
            rows = torch.stack([ids_t[b : b + length + 1] for b, _ in chunk])  # [B, L + 1]
            logits = runner.logits(rows[:, :-1])
            # score only the last n_new positions of each window (the softmax only where it is needed)
            pos = torch.arange(length, device=logits.device)
            n_new = torch.tensor([n for _, n in chunk], device=logits.device)
            mask = pos.unsqueeze(0) >= (length - n_new).unsqueeze(1)
            picked = logits[mask]  # [scored, V]
            targets = rows[:, 1:].to(logits.device)[mask]
            lp = picked.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
            nll -= lp.double().sum().cpu()
            done = int(n_new.sum())
            n_scored += done
            bar.update(done)
    bar.close()
    assert n_scored == n_targets
    return float(nll), n_scored, len(plan)


def evaluate_perplexity(
    model: nn.Module,
    text_set: evalsets.TextSet,
    *,
    context: int,
    stride: int,
    batch_size: int = 8,
    max_tokens: Optional[int] = None,
    encoding: Any = None,
    progress: bool = True,
    bf16: bool = True,
) -> dict[str, Any]:
    """Per-word and per-token perplexity of a text set (detokenized; see the module docstring)."""
    t0 = time.perf_counter()
    enc = encoding or default_encoding()
    originals = text_set.lines
    truncated = False
    if max_tokens is None:
        lines = text_set.detokenized_lines()
    else:
        # keep whole lines while their tokens fit (each line's tokens + its newline, counted separately)
        rules = evalsets.DETOK_RULES[text_set.name]
        used, lines = 0, []
        for original in originals:
            line = evalsets.detokenize_line(original, rules)
            cost = len(enc.encode_ordinary(line + "\n"))
            if lines and used + cost > max_tokens:
                break
            used += cost
            lines.append(line)
        truncated = len(lines) < len(originals)
        originals = originals[: len(lines)]
    text = "\n".join(lines) + "\n"
    ids = [EOT] + enc.encode_ordinary(text)
    n_words = sum(len(line.split()) + 1 for line in originals)
    nll, n_tokens, n_windows = sliding_window_nll(
        model, ids, context, stride, batch_size, enc.n_vocab, progress, desc=text_set.name, bf16=bf16
    )
    return {
        "ppl_word": math.exp(nll / n_words),
        "ppl_token": math.exp(nll / n_tokens),
        "nll_nats": nll,
        "n_words": n_words,
        "n_tokens": n_tokens,
        "n_lines": len(originals),
        "n_windows": n_windows,
        "context": min(context, n_tokens),
        "stride": stride,
        "split": text_set.split,
        "truncated": truncated,
        "origin": text_set.origin,
        "n": n_words,
        "time_s": time.perf_counter() - t0,
    }


# -------------------------------------------------------------------------- continuation scoring
def score_continuations(
    model: nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    context: int,
    batch_size: int = 8,
    n_vocab: int = 50257,
    progress: bool = False,
    desc: str = "scoring",
    bf16: bool = True,
) -> list[tuple[float, bool]]:
    """For each ``(context_ids, continuation_ids)``: the summed log-probability (nats) of the continuation
    after the context, and whether greedy decoding reproduces every continuation token.

    A request longer than ``context + 1`` tokens loses context tokens from the left."""
    rows: dict[tuple[int, ...], int] = {}
    plan: list[tuple[int, int, tuple[int, ...]]] = []  # (row, first scored position, continuation)
    for ctx, cont in requests:
        cont = tuple(cont)
        if not 1 <= len(cont) <= context:
            raise MstError(f"a continuation of {len(cont)} tokens cannot be scored in a {context}-token window")
        full = (tuple(ctx) + cont)[-(context + 1) :]
        inp = full[:-1]
        row = rows.setdefault(inp, len(rows))
        plan.append((row, len(inp) - len(cont), cont))
    inputs = list(rows)
    by_row: dict[int, list[int]] = {}
    for i, (row, _, _) in enumerate(plan):
        by_row.setdefault(row, []).append(i)
    order = sorted(range(len(inputs)), key=lambda r: -len(inputs[r]))  # long first: a slow start, a true ETA
    runner = Runner(model, n_vocab, bf16)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(plan)
    bar = tqdm(total=len(plan), desc=desc, unit="ex", disable=not progress, leave=False)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(inputs[r]) for r in batch)
            idx = torch.zeros((len(batch), width), dtype=torch.long)  # right padding; causal, so harmless
            for j, r in enumerate(batch):
                idx[j, : len(inputs[r])] = torch.tensor(inputs[r], dtype=torch.long)
            logits = runner.logits(idx)
            for j, r in enumerate(batch):
                for i in by_row[r]:
                    _, first, cont = plan[i]
                    lg = logits[j, first : first + len(cont)]
                    target = torch.tensor(cont, device=lg.device)
                    lp = torch.log_softmax(lg, dim=-1).gather(-1, target.unsqueeze(-1)).sum()
                    greedy = bool((lg.argmax(dim=-1) == target).all())
                    out[i] = (float(lp), greedy)
                    bar.update(1)
    bar.close()
    return out
