"""Zero-shot and few-shot evaluation of a GPT, following the GPT-2 / GPT-3 conventions.

Tasks (``python -m mstlib eval --tasks ...``; ``all`` is the paper's seven, Table 3 plus its GLUE table):

* ``lambada``: OpenAI's LAMBADA test jsonl, 5,153 passages.
* ``wikitext2``, ``wikitext103``, ``ptb``, ``1bw``: perplexity on the test split (``--split valid`` for
  WikiText/PTB), 1BW on its held-out shard 0. ``wikitext2_raw`` (no ``<unk>``) is there too, not in ``all``.
* ``rte``, ``mrpc``: few-shot GLUE classification on the dev split.

Protocol, every choice stated (the data side, detokenizers and word counts, is in :mod:`mstlib.data.evalsets`):

* **Tokens.** GPT-2's BPE (:func:`mstlib.data.tokenizer.get_encoding`). Every scored sequence starts with
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
(:mod:`mstlib.results`) reads it back. The model comes from :func:`mstlib.checkpoint.load_model` (a checkpoint
file or a finished run folder; a checkpoint of another config is a CheckpointError) and is evaluated as
loaded, i.e. with the attention it has by default (causal, dense).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

# the text bar: tqdm.auto warns in a kernel without ipywidgets, and that warning lands in a page
from tqdm import tqdm

from .checkpoint import load_model
from .data import evalsets
from .errors import CheckpointError, ConfigError, MstError
from .fewshot import TEMPLATES, build_prompt, choose_demonstrations, evaluate_fewshot, fit_prompt  # noqa: F401
from .results import DONE, atomic_write_json
from .scoring import (  # noqa: F401 (evaluation's front door: the measurements' names are read from here)
    EOT,
    EvalSettings,
    Runner,
    default_encoding,
    evaluate_perplexity,
    score_continuations,
    sliding_window_nll,
    window_plan,
)
from .stats import wilson_interval

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
    enc = encoding or default_encoding()
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
    enc = encoding or default_encoding()
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
    runner = Runner(model, enc.n_vocab, settings.cuda_bf16)
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
    target = Path(run_dir) / name
    atomic_write_json(target, results)
    return target


# ----------------------------------------------------------------------------------- checkpoints
def load_for_eval(
    checkpoint: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> nn.Module:
    """The trained model of a checkpoint file or of a run folder, through :func:`mstlib.checkpoint.load_model`
    (one loader for the whole project). It raises CheckpointError when the checkpoint is missing or
    unreadable, when its weights do not fit its model config, and, for a run folder, when the checkpoint
    was written for another config than the folder's ``config.json``."""
    if (checkpoint is None) == (run_dir is None):
        raise CheckpointError("give exactly one of a checkpoint (--checkpoint PATH) or a run folder (--run-dir DIR)")
    return load_model(checkpoint if checkpoint is not None else run_dir, map_location=device)


def _run_is_done(run_dir: Path) -> bool:
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
