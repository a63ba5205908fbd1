"""Zero-shot and few-shot evaluation of a GPT, following the GPT-2 / GPT-3 conventions.

Tasks (``python -m mstlib eval --tasks ...``; ``all`` is the paper's seven, Table 3 plus its GLUE table):

* ``lambada``: OpenAI's LAMBADA test jsonl, 5,153 passages.
* ``wikitext2``, ``wikitext103``, ``ptb``, ``1bw``: perplexity on the test split (``--split valid`` for
  WikiText/PTB), 1BW on its held-out shard 0. ``wikitext2_raw`` (no ``<unk>``) is there too, not in ``all``.
* ``rte``, ``mrpc``: few-shot GLUE classification on the dev split.

Protocol, every choice stated (the data side, detokenizers and word counts, is in :mod:`mstlib.evalsets`):

* **Tokens.** GPT-2's BPE (:func:`mstlib.tokenizer.get_encoding`). Every scored sequence starts with
  ``<|endoftext|>`` (50256), the document separator of training, so the first real token is predicted too.
  Text is encoded with ``encode_ordinary`` (a literal ``<|endoftext|>`` in the data is plain text).
  Logits beyond the tokenizer's 50,257 entries (nanoGPT pads the vocabulary to 50,304) are dropped before
  the softmax: those ids never occur, so the distribution is over the real vocabulary. A model that
  gives equal logits therefore has a perplexity of exactly 50,257 per token.
* **Perplexity.** The detokenized lines are joined with ``"\\n"`` (and end with one), encoded once, and
  scored with a sliding window of ``context`` tokens (default: the model's ``block_size``) moved by
  ``stride`` tokens (default ``context // 2``): the first window scores all its tokens, each later window
  only the tokens no earlier window scored, so every token is scored exactly once and, after the first
  window, with at least ``context - stride`` tokens of context. The last window is moved back to end at
  the last token, so all windows have the same length and batch without padding. Reported:
  ``ppl_token = exp(NLL / n_tokens)`` (per BPE token) and ``ppl_word = exp(NLL / n_words)`` (per word of
  the benchmark: whitespace words of the original file plus one per line, the count in SOURCES.md), with
  NLL the total negative log-likelihood in nats of all scored tokens (newlines included). 1BW's sentences
  are shuffled and independent; they are scored as one stream like the others (GPT-2 did not say).
  ``max_tokens`` keeps only the first lines whose tokens fit in that budget (whole lines, so the word
  count stays exact); the result then says ``truncated``.
* **LAMBADA.** The last word is the text after the last space; the context is everything before that
  space, the target is ``" " + word`` encoded on its own (as lm-evaluation-harness does). ``acc``: the
  word counts as predicted only when the greedy (argmax) token equals the target at *every* BPE token of
  the word, with the true earlier tokens fed in (teacher forcing). ``ppl``: ``exp`` of the mean over
  passages of the word's NLL (summed over its tokens), i.e. perplexity per word, the harness's and GPT-2's
  unit; ``ppl_token`` divides the same NLL by the number of target tokens instead. No stop-word filter
  (GPT-2 mentions one in its paper; GPT-3 and the harness use none). Contexts longer than the window lose
  tokens from the left.
* **Few-shot RTE / MRPC** (GPT-3 style). Prompt = ``k`` demonstrations and the query joined by a blank
  line (:data:`DEMO_SEPARATOR`), after the leading ``<|endoftext|>``. Templates (:data:`TEMPLATES`)::

      RTE:  "{premise}\\nquestion: {hypothesis} True or False?\\nanswer: {True|False}"
      MRPC: "Sentence 1: {s1}\\nSentence 2: {s2}\\nQuestion: Do both sentences mean the same thing?\\nAnswer: {yes|no}"

  (entailment -> True, equivalent -> yes). The query ends after ``answer:`` / ``Answer:``; the label words
  are scored as continuations ``" True"``, ``" False"``, ``" yes"``, ``" no"`` (each one BPE token, so no
  length normalisation is needed) and the one with the higher log-likelihood is the prediction (ties go to
  the first label listed). Demonstrations for dev example ``i`` are ``k`` distinct training examples drawn
  by ``random.Random(f"{seed}:{task}:{i}")``: deterministic given the seed and independent of
  ``max_examples``. When the prompt does not fit the window, whole demonstrations are dropped from the
  left (the earliest first); a query that alone is too long loses tokens from the left. Reported:
  accuracy with a 95% Wilson interval, the majority-class baseline (always answer the most frequent
  *training* label, scored on the same dev examples), chance (1 / number of labels), the share of each
  predicted label, and how many demonstrations were used on average. MRPC uses GLUE's tokenized text by
  default (what HF ``glue/mrpc`` gives; ``mrpc_variant="msi"`` for Microsoft's untokenized text).
* **Numerics and speed.** ``torch.inference_mode``; on CUDA the forward runs under bf16 autocast (so the
  logits themselves are bf16-rounded; ``cuda_bf16=False`` / ``--fp32`` gives float32 there), on CPU in
  float32; log-softmax is always taken in float32 and NLL sums in float64. Windows of equal length are
  stacked into batches of ``batch_size``; LAMBADA and GLUE prompts are sorted by length and right-padded
  (causal attention means padding after a sequence cannot change it); identical inputs (the two label
  words of one prompt) are run once.

Results are a JSON-ready dict: ``{"tasks": {name: metrics + n + time_s}, "protocol": ..., "model": ...,
"env": ..., "time_s": ...}``; ``n`` is the number of scored examples, for perplexity sets the number of
benchmark words. :func:`write_results` stores it atomically as ``<run_dir>/eval.json``, where the run store
(:mod:`mstlib.results`) reads it back. The model comes from :func:`mstlib.train.load_model` (a checkpoint
file or a finished run folder; a checkpoint of another config is a CheckpointError) and is evaluated as
loaded, i.e. with the attention it has by default (causal, dense).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import torch
import torch.nn as nn
# the text bar: tqdm.auto warns in a kernel without ipywidgets, and that warning lands in a page
from tqdm import tqdm

from . import evalsets
from .errors import CheckpointError, ConfigError, MstError
from .evalsets import PairExample
from .stats import wilson_interval
from .tokenizer import EOT as _TOKENIZER_EOT

#: task -> kind
TASKS: dict[str, str] = {
    "lambada": "lambada",
    "ptb": "perplexity",
    "wikitext2": "perplexity",
    "wikitext103": "perplexity",
    "1bw": "perplexity",
    "rte": "fewshot",
    "mrpc": "fewshot",
    "wikitext2_raw": "perplexity",
}
#: the paper's zero-shot (Table 3) and few-shot (GLUE) tasks; what ``all`` means
DEFAULT_TASKS: tuple[str, ...] = ("lambada", "ptb", "wikitext2", "wikitext103", "1bw", "rte", "mrpc")

EOT = _TOKENIZER_EOT  # GPT-2's <|endoftext|>, 50256
DEMO_SEPARATOR = "\n\n"


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


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma-separated string or a list of names -> list of task names (ConfigError on an
    unknown name, listing the valid ones)."""
    names = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in names:
        if not name:
            continue
        expanded = list(DEFAULT_TASKS) if name == "all" else [name]
        for t in expanded:
            if t not in TASKS:
                raise ConfigError(f"unknown evaluation task {t!r}; valid tasks: {', '.join(TASKS)} (or 'all')")
            if t not in out:
                out.append(t)
    if not out:
        raise ConfigError(f"no evaluation task given; valid tasks: {', '.join(TASKS)} (or 'all')")
    return out


def _encoding() -> Any:
    from .tokenizer import get_encoding

    return get_encoding()


# ------------------------------------------------------------------------------------ model calls
class _Runner:
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
def _eval_mode(model: nn.Module) -> Iterator[None]:
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
    runner = _Runner(model, n_vocab, bf16)
    nll = torch.zeros((), dtype=torch.float64)
    n_scored = 0
    bar = tqdm(total=n_targets, desc=desc, unit="tok", disable=not progress, leave=False)
    with _eval_mode(model):
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
    enc = encoding or _encoding()
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
    runner = _Runner(model, n_vocab, bf16)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(plan)
    bar = tqdm(total=len(plan), desc=desc, unit="ex", disable=not progress, leave=False)
    with _eval_mode(model):
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


# -------------------------------------------------------------------------------------- LAMBADA
def lambada_split(text: str) -> tuple[str, str]:
    """``(context, target)`` with target = the last space and the word after it."""
    text = text.rstrip()
    cut = text.rfind(" ")
    if cut <= 0:
        raise MstError(f"LAMBADA passage has no space to split off a last word: {text[:60]!r}")
    return text[:cut], text[cut:]


def evaluate_lambada(
    model: nn.Module,
    texts: Sequence[str],
    *,
    context: int,
    batch_size: int = 8,
    encoding: Any = None,
    progress: bool = True,
    bf16: bool = True,
) -> dict[str, Any]:
    """Last-word accuracy (all BPE tokens greedy-correct) and last-word perplexity (see module docstring)."""
    t0 = time.perf_counter()
    enc = encoding or _encoding()
    requests = []
    for text in texts:
        ctx, word = lambada_split(text)
        requests.append(([EOT] + enc.encode_ordinary(ctx), enc.encode_ordinary(word)))
    scores = score_continuations(
        model, requests, context=context, batch_size=batch_size, n_vocab=enc.n_vocab, progress=progress,
        desc="lambada", bf16=bf16,
    )
    n = len(scores)
    correct = sum(g for _, g in scores)
    nll = -sum(lp for lp, _ in scores)
    n_target_tokens = sum(len(c) for _, c in requests)
    lo, hi = wilson_interval(correct, n)
    return {
        "acc": correct / n,
        "acc_ci95": [lo, hi],
        "correct": correct,
        "ppl": math.exp(nll / n),
        "ppl_token": math.exp(nll / n_target_tokens),
        "nll_nats": nll,
        "n": n,
        "n_target_tokens": n_target_tokens,
        "n_multi_token_words": sum(len(c) > 1 for _, c in requests),
        "n_truncated": sum(len(c) + len(t) > context + 1 for c, t in requests),
        "time_s": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------- few-shot
@dataclass(frozen=True)
class Template:
    """A prompt template: ``body`` formats ``a`` and ``b`` and ends just before the answer; ``words`` maps
    each label name to its answer word (scored with a leading space)."""

    body: str
    words: dict[str, str]

    def query(self, ex: PairExample) -> str:
        return self.body.format(a=ex.text_a, b=ex.text_b)

    def demonstration(self, ex: PairExample) -> str:
        return self.query(ex) + " " + self.words[ex.label]


TEMPLATES: dict[str, Template] = {
    "rte": Template(
        "{a}\nquestion: {b} True or False?\nanswer:", {"entailment": "True", "not_entailment": "False"}
    ),
    "mrpc": Template(
        "Sentence 1: {a}\nSentence 2: {b}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
        {"equivalent": "yes", "not_equivalent": "no"},
    ),
}


def choose_demonstrations(train: Sequence[PairExample], k: int, seed: int, task: str, index: int) -> list[PairExample]:
    """``k`` distinct training examples for dev example ``index`` (deterministic in seed, task, index)."""
    if k > len(train):
        raise ConfigError(f"k_shot={k} is larger than the {len(train)} training examples of {task}")
    rng = random.Random(f"{seed}:{task}:{index}")  # str seeds hash deterministically (not PYTHONHASHSEED)
    return [train[i] for i in rng.sample(range(len(train)), k)]


def build_prompt(task: str, demos: Sequence[PairExample], query: PairExample) -> str:
    """Demonstrations with answers, then the query without, joined by :data:`DEMO_SEPARATOR`."""
    t = TEMPLATES[task]
    return DEMO_SEPARATOR.join([t.demonstration(d) for d in demos] + [t.query(query)])


def fit_prompt(
    task: str, demos: Sequence[PairExample], query: PairExample, enc: Any, context: int, answer_tokens: int
) -> tuple[list[int], int, bool]:
    """Token ids of the longest prompt that leaves ``answer_tokens`` room in ``context``: drop whole
    demonstrations from the left, then (query alone too long) tokens from the left. Returns ``(ids,
    demonstrations used, whether tokens were cut)``."""
    budget = context - answer_tokens
    for used in range(len(demos), -1, -1):
        ids = [EOT] + enc.encode_ordinary(build_prompt(task, demos[len(demos) - used :], query))
        if len(ids) <= budget:
            return ids, used, False
    return ids[-budget:], 0, True


def evaluate_fewshot(
    model: nn.Module,
    task: str,
    train: Sequence[PairExample],
    dev: Sequence[PairExample],
    *,
    k: int,
    seed: int,
    context: int,
    batch_size: int = 8,
    encoding: Any = None,
    progress: bool = True,
    bf16: bool = True,
) -> dict[str, Any]:
    """k-shot accuracy on ``dev`` by comparing the log-likelihood of the label words."""
    t0 = time.perf_counter()
    enc = encoding or _encoding()
    template = TEMPLATES[task]
    labels = list(template.words)
    answers = {lab: enc.encode_ordinary(" " + w) for lab, w in template.words.items()}
    longest = max(len(a) for a in answers.values())
    requests, used_k, n_cut = [], [], 0
    for i, ex in enumerate(dev):
        demos = choose_demonstrations(train, k, seed, task, i)
        ids, used, cut = fit_prompt(task, demos, ex, enc, context, longest)
        used_k.append(used)
        n_cut += cut
        requests.extend((ids, answers[lab]) for lab in labels)
    scores = score_continuations(
        model, requests, context=context, batch_size=batch_size, n_vocab=enc.n_vocab, progress=progress, desc=task,
        bf16=bf16,
    )
    predictions = []
    for i in range(len(dev)):
        lps = [scores[i * len(labels) + j][0] for j in range(len(labels))]
        predictions.append(labels[max(range(len(labels)), key=lambda j: (lps[j], -j))])  # ties: first label
    n = len(dev)
    correct = sum(p == ex.label for p, ex in zip(predictions, dev))
    majority = Counter(ex.label for ex in train).most_common(1)[0][0]
    lo, hi = wilson_interval(correct, n)
    counts = Counter(predictions)
    return {
        "acc": correct / n,
        "acc_ci95": [lo, hi],
        "correct": correct,
        "n": n,
        "majority_label": majority,
        "majority_acc": sum(ex.label == majority for ex in dev) / n,
        "chance_acc": 1.0 / len(labels),
        "predicted_share": {lab: counts.get(lab, 0) / n for lab in labels},
        "k": k,
        "mean_k_used": sum(used_k) / n,
        "n_fewer_demos": sum(u < k for u in used_k),
        "n_query_truncated": n_cut,
        "seed": seed,
        "template": template.body,
        "label_words": template.words,
        "time_s": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------- the driver
def _model_info(model: nn.Module) -> dict[str, Any]:
    info: dict[str, Any] = {"class": type(model).__name__}
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        info["config"] = dataclasses.asdict(cfg)
    info["n_params"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return info


def evaluate_model(
    model: nn.Module,
    tasks: str | Sequence[str] = "all",
    settings: Optional[EvalSettings] = None,
    *,
    encoding: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (names of :data:`TASKS` or ``"all"``); returns the results dict.

    ``settings`` (or keyword overrides of its fields, e.g. ``max_examples=50``) say how; the model stays on
    its device, and its train/eval mode is restored afterwards."""
    settings = dataclasses.replace(settings or EvalSettings(), **overrides)
    for field_, least in (("batch_size", 1), ("k_shot", 0), ("max_examples", 1), ("max_tokens", 1)):
        value = getattr(settings, field_)
        if value is not None and value < least:
            raise ConfigError(f"evaluation setting {field_} must be at least {least}, got {value}")
    names = parse_tasks(tasks)
    enc = encoding or _encoding()
    block = getattr(getattr(model, "config", None), "block_size", None)
    context = settings.context or block
    if context is None:
        raise ConfigError("the model has no config.block_size; pass settings.context (tokens per window)")
    if block is not None and context > block:
        raise ConfigError(f"context {context} is longer than the model's block_size {block}")
    stride = settings.stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise ConfigError(f"stride must be between 1 and the context ({context}), got {stride}")
    src, edir = settings.source, settings.eval_dir

    def cap(xs: list[Any]) -> list[Any]:
        return xs if settings.max_examples is None else xs[: settings.max_examples]

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for name in tqdm(names, desc="eval tasks", disable=not settings.progress or len(names) < 2):
        kind = TASKS[name]
        if kind == "perplexity":
            split = "test" if name == "1bw" else settings.split
            ts = evalsets.load_text(name, split, edir, source=src)
            out[name] = evaluate_perplexity(
                model, ts, context=context, stride=stride, batch_size=settings.batch_size,
                max_tokens=settings.max_tokens, encoding=enc, progress=settings.progress, bf16=settings.cuda_bf16,
            )
        elif kind == "lambada":
            texts = cap(evalsets.load_lambada(edir, source=src))
            out[name] = evaluate_lambada(
                model, texts, context=context, batch_size=settings.batch_size, encoding=enc,
                progress=settings.progress, bf16=settings.cuda_bf16,
            )
        else:
            variant = settings.mrpc_variant if name == "mrpc" else "glue"
            train = evalsets.load_glue(name, "train", edir, source=src, variant=variant)
            dev = cap(evalsets.load_glue(name, "dev", edir, source=src, variant=variant))
            out[name] = evaluate_fewshot(
                model, name, train, dev, k=settings.k_shot, seed=settings.seed, context=context,
                batch_size=settings.batch_size, encoding=enc, progress=settings.progress, bf16=settings.cuda_bf16,
            )
    runner = _Runner(model, enc.n_vocab, settings.cuda_bf16)
    on_cuda = runner.device.type == "cuda"
    protocol = dataclasses.asdict(settings)
    protocol.update(context=context, stride=stride, n_vocab=enc.n_vocab, bos_token=EOT)
    if src == "local":
        protocol["eval_dir"] = str(evalsets.resolve_eval_dir(edir))
    return {
        "tasks": out,
        "protocol": protocol,
        "model": _model_info(model),
        "env": {
            "device": str(runner.device),
            "device_name": torch.cuda.get_device_name(runner.device) if on_cuda else platform.machine(),
            "dtype": "bfloat16 autocast" if on_cuda and settings.cuda_bf16 else "float32",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "time_s": time.perf_counter() - t0,
    }


def write_results(run_dir: str | os.PathLike[str], results: dict[str, Any], name: str = "eval.json") -> Path:
    """Write ``results`` as ``<run_dir>/<name>`` atomically (the run store's
    :func:`~mstlib.results.atomic_write_json`: temporary file in the same folder, then ``os.replace``), so
    a crash never leaves half a file. Returns the path."""
    from .results import atomic_write_json

    target = Path(run_dir) / name
    atomic_write_json(target, results)
    return target


# ----------------------------------------------------------------------------------- checkpoints
def load_for_eval(
    checkpoint: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> nn.Module:
    """The trained model of a checkpoint file or of a run folder, through :func:`mstlib.train.load_model`
    (one loader for the whole project). It raises CheckpointError when the checkpoint is missing or
    unreadable, when its weights do not fit its model config, and, for a run folder, when the checkpoint
    was written for another config than the folder's ``config.json``."""
    if (checkpoint is None) == (run_dir is None):
        raise CheckpointError("give exactly one of a checkpoint (--checkpoint PATH) or a run folder (--run-dir DIR)")
    from .train import load_model

    return load_model(checkpoint if checkpoint is not None else run_dir, map_location=device)


def _run_is_done(run_dir: Path) -> bool:
    from .results import DONE

    return (run_dir / DONE).is_file()


# -------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m mstlib eval``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="finished run folder (results/<preset>/<method>/<run_id>): its checkpoint "
                     "is evaluated and eval.json written into it")
    src.add_argument("--checkpoint", help="a checkpoint file (results go to --out, else beside it)")
    parser.add_argument("--tasks", default="all", help=f"comma-separated, or 'all' ({','.join(DEFAULT_TASKS)}); "
                        f"valid: {','.join(TASKS)}")
    d = EvalSettings()
    parser.add_argument("--context", type=int, default=None, help="tokens per window (default: block_size)")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride in tokens (default: context/2)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per forward pass")
    parser.add_argument("--k-shot", type=int, default=d.k_shot, help="GLUE demonstrations per prompt")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed that picks the demonstrations")
    parser.add_argument("--split", choices=("test", "valid"), default=d.split, help="perplexity split")
    parser.add_argument("--max-examples", type=int, default=None, help="LAMBADA/GLUE: first N only (smoke)")
    parser.add_argument("--max-tokens", type=int, default=None, help="perplexity: first lines within N tokens")
    parser.add_argument("--mrpc-variant", choices=("glue", "msi"), default=d.mrpc_variant)
    parser.add_argument("--source", choices=("local", "hub"), default=d.source, help="local files or online hubs")
    parser.add_argument("--eval-dir", default=None, help=f"evaluation folder (default: ${evalsets.ENV_VAR} or "
                        "<shared>/data/eval)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--out", default=None, help="results file (default: <run-dir>/eval.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--fp32", action="store_true", help="float32 on CUDA too (default there: bf16 autocast)")


def _summary(results: dict[str, Any]) -> str:
    lines = [f"{'task':<14}{'metric':<40}{'n':>8}{'time s':>9}"]
    for name, r in results["tasks"].items():
        if "ppl_word" in r:
            m = f"ppl/word {r['ppl_word']:.2f}  ppl/token {r['ppl_token']:.2f}"
        elif "ppl" in r:
            m = f"acc {r['acc']:.4f}  ppl {r['ppl']:.2f}"
        else:
            lo, hi = r["acc_ci95"]
            m = f"acc {r['acc']:.4f} [{lo:.3f},{hi:.3f}] maj {r['majority_acc']:.3f}"
        lines.append(f"{name:<14}{m:<40}{r['n']:>8}{r['time_s']:>9.1f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``python -m mstlib eval``: load, evaluate, write eval.json, print a table."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tasks = parse_tasks(args.tasks)  # fail on a bad name before loading anything
    if args.run_dir and not args.out and not _run_is_done(Path(args.run_dir)):
        raise MstError(
            f"run {args.run_dir} has not finished training (no 'done' marker), so its eval.json would describe "
            "an intermediate model; finish the run, or evaluate its checkpoint with --checkpoint PATH --out FILE"
        )
    model = load_for_eval(checkpoint=args.checkpoint, run_dir=args.run_dir, device=device)
    settings = EvalSettings(
        context=args.context, stride=args.stride, batch_size=args.batch_size, k_shot=args.k_shot, seed=args.seed,
        split=args.split, max_examples=args.max_examples, max_tokens=args.max_tokens,
        mrpc_variant=args.mrpc_variant, source=args.source, eval_dir=args.eval_dir, progress=not args.no_progress,
        cuda_bf16=not args.fp32,
    )
    results = evaluate_model(model, tasks, settings)
    results["source"] = str(args.checkpoint or args.run_dir)
    if args.out:
        out = Path(args.out)
        path = write_results(out.parent, results, out.name)
    else:
        folder = Path(args.run_dir) if args.run_dir else Path(args.checkpoint).parent
        path = write_results(folder, results)
    print(_summary(results))
    print(f"wrote {path}")
    return 0
