"""Few-shot GLUE classification (RTE, MRPC) as GPT-3 does it: templates, demonstrations drawn per query,
prompts fitted into the context, and the label whose continuation scores higher."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch.nn as nn

# the text bar: tqdm.auto warns in a kernel without ipywidgets, and that warning lands in a page
from .data.evalsets import PairExample
from .errors import ConfigError
from .scoring import EOT, default_encoding, score_continuations
from .stats import wilson_interval

DEMO_SEPARATOR = "\n\n"


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
    enc = encoding or default_encoding()
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
