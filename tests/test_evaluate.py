"""Tests of mstlib.evaluate: perplexity units and windows, LAMBADA scoring, few-shot prompts, agreement with
Hugging Face's GPT-2, results files and the eval command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mstlib.data import evalsets
from mstlib import evaluate as ev
from mstlib.config import ModelConfig
from mstlib.errors import CheckpointError, ConfigError, MstError
from mstlib.data.evalsets import PairExample
from mstlib.model import GPT
from mstlib.data.tokenizer import get_encoding

ENC = get_encoding()
N_VOCAB = ENC.n_vocab  # 50257
SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)


class Uniform(nn.Module):
    """Equal logits everywhere (over nanoGPT's padded 50,304 entries)."""

    def __init__(self, block_size: int = 64) -> None:
        super().__init__()
        self.config = dataclasses.replace(SMALL, block_size=block_size)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, 50304) + self.dummy, None


class Bigram(nn.Module):
    """Puts a high logit on ``table[current token]``: a model whose greedy choices we dictate."""

    def __init__(self, table: dict[int, int], default: int = 0) -> None:
        super().__init__()
        self.config = SMALL
        self.table, self.default = table, default
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, 50304)
        nxt = idx.clone().apply_(lambda t: self.table.get(t, self.default))
        logits.scatter_(-1, nxt.unsqueeze(-1), 10.0)
        return logits + self.dummy, None


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(SMALL).eval()


# ----------------------------------------------------------------------------------- perplexity
def test_uniform_model_has_perplexity_vocab_size():
    ts = evalsets.TextSet("ptb", "test", (" no it was n't black monday ", " the $ N million issue "), "inline")
    r = ev.evaluate_perplexity(Uniform(), ts, context=8, stride=4, encoding=ENC, progress=False)
    assert r["ppl_token"] == pytest.approx(N_VOCAB, rel=1e-5)
    assert r["n_words"] == 6 + 1 + 5 + 1
    # per word: the same total NLL spread over the benchmark's words
    assert r["ppl_word"] == pytest.approx(N_VOCAB ** (r["n_tokens"] / r["n_words"]), rel=1e-4)
    lam = ev.evaluate_lambada(Uniform(), ["a b c d", "one two three four five"], context=64, encoding=ENC,
                              progress=False)
    assert lam["ppl_token"] == pytest.approx(N_VOCAB, rel=1e-5)


@pytest.mark.parametrize("n,context,stride", [(1, 4, 4), (10, 4, 2), (9, 4, 2), (100, 16, 5), (7, 64, 32), (33, 8, 8)])
def test_window_plan_scores_each_token_once(n, context, stride):
    plan = ev.window_plan(n, context, stride)
    length = min(context, n)
    covered = []
    for i, (begin, new) in enumerate(plan):
        assert 0 <= begin and begin + length <= n and 1 <= new <= length
        covered += list(range(begin + length - new, begin + length))
        if i:  # later windows: every scored token has at least context - stride tokens before it
            assert length - new >= min(length, context - stride) or begin + length == n
    assert covered == list(range(n))


def test_window_plan_rejects_bad_stride():
    with pytest.raises(ConfigError):
        ev.window_plan(10, 4, 5)
    with pytest.raises(ConfigError):
        ev.window_plan(10, 4, 0)


def _reference_nll(model, ids, context, stride):
    """Each token scored by its own forward pass over exactly the context its window gives it."""
    plan = ev.window_plan(len(ids) - 1, context, stride)
    length = min(context, len(ids) - 1)
    total = 0.0
    with torch.no_grad():
        for begin, new in plan:
            for j in range(begin + length - new, begin + length):  # target index j predicts ids[j + 1]
                inp = torch.tensor([ids[begin : j + 1]])
                logits = model(inp)[0][0, -1, :N_VOCAB].double()
                total -= float(torch.log_softmax(logits, -1)[ids[j + 1]])
    return total


def test_sliding_window_equals_single_window_when_text_fits():
    model = small_gpt()
    ids = [ev.EOT] + ENC.encode_ordinary("The cat sat on the mat, and then it slept for a long while.")
    assert len(ids) <= SMALL.block_size
    nll_slide, n, windows = ev.sliding_window_nll(model, ids, context=64, stride=5)
    assert windows == 1 and n == len(ids) - 1
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0][0, :, :N_VOCAB]
    single = float(nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    assert nll_slide == pytest.approx(single, rel=1e-5)


def test_sliding_window_matches_per_token_reference_and_batching():
    model = small_gpt(1)
    ids = [ev.EOT] + ENC.encode_ordinary("one two three four five six seven eight nine ten eleven twelve")
    ref = _reference_nll(model, ids, context=8, stride=3)
    for batch in (1, 3, 64):
        nll, n, _ = ev.sliding_window_nll(model, ids, context=8, stride=3, batch_size=batch)
        assert n == len(ids) - 1
        assert nll == pytest.approx(ref, rel=1e-5)


# -------------------------------------------------------------------------------------- LAMBADA
def test_lambada_split_takes_text_after_last_space():
    assert ev.lambada_split('He said "go home"\n\nand I saw Harlin') == ('He said "go home"\n\nand I saw', " Harlin")


def test_multi_token_word_counts_only_when_every_token_is_right():
    text = "I stare at Harlin"
    ctx, word = ev.lambada_split(text)
    ctx_ids, word_ids = [ev.EOT] + ENC.encode_ordinary(ctx), ENC.encode_ordinary(word)
    assert len(word_ids) >= 2, "the test needs a word of several BPE tokens"
    chain = {ctx_ids[-1]: word_ids[0]}
    chain.update({a: b for a, b in zip(word_ids, word_ids[1:])})
    right = ev.evaluate_lambada(Bigram(chain), [text], context=64, encoding=ENC, progress=False)
    assert right["acc"] == 1.0 and right["n_multi_token_words"] == 1
    wrong_last = dict(chain)
    wrong_last[word_ids[-2]] = word_ids[-1] + 1  # all but the last token right
    r = ev.evaluate_lambada(Bigram(wrong_last), [text], context=64, encoding=ENC, progress=False)
    assert r["acc"] == 0.0
    wrong_first = dict(chain)
    wrong_first[ctx_ids[-1]] = word_ids[0] + 1  # all but the first token right
    assert ev.evaluate_lambada(Bigram(wrong_first), [text], context=64, encoding=ENC, progress=False)["acc"] == 0.0


def test_lambada_perplexity_is_per_word():
    model = small_gpt(2)
    texts = ["the cat sat on the mat", "a dog ran to the extraordinarily"]
    r = ev.evaluate_lambada(model, texts, context=64, encoding=ENC, progress=False)
    scores = ev.score_continuations(
        model, [([ev.EOT] + ENC.encode_ordinary(c), ENC.encode_ordinary(w)) for c, w in map(ev.lambada_split, texts)],
        context=64,
    )
    assert r["ppl"] == pytest.approx(math.exp(-sum(s for s, _ in scores) / 2), rel=1e-6)


# ------------------------------------------------------------------------------------- few-shot
D1 = PairExample("A cat sat.", "An animal sat.", "entailment")
D2 = PairExample("It rained.", "It was dry.", "not_entailment")
Q = PairExample("Tom ran home.", "Tom moved.", "entailment")


def test_rte_prompt_is_exactly_the_documented_template():
    assert ev.build_prompt("rte", [D1, D2], Q) == (
        "A cat sat.\nquestion: An animal sat. True or False?\nanswer: True\n\n"
        "It rained.\nquestion: It was dry. True or False?\nanswer: False\n\n"
        "Tom ran home.\nquestion: Tom moved. True or False?\nanswer:"
    )


def test_mrpc_prompt_is_exactly_the_documented_template():
    d = PairExample("He left .", "He went away .", "equivalent")
    q = PairExample("She won .", "She lost .", "not_equivalent")
    assert ev.build_prompt("mrpc", [d], q) == (
        "Sentence 1: He left .\nSentence 2: He went away .\nQuestion: Do both sentences mean the same thing?\n"
        "Answer: yes\n\n"
        "Sentence 1: She won .\nSentence 2: She lost .\nQuestion: Do both sentences mean the same thing?\nAnswer:"
    )


def test_label_words_are_single_tokens():
    for t in ev.TEMPLATES.values():
        for w in t.words.values():
            assert len(ENC.encode_ordinary(" " + w)) == 1


def test_demonstrations_are_deterministic():
    train = [PairExample(f"p{i}", f"h{i}", "entailment") for i in range(50)]
    a = ev.choose_demonstrations(train, 5, seed=1, task="rte", index=3)
    assert a == ev.choose_demonstrations(train, 5, seed=1, task="rte", index=3)
    assert len(set(a)) == 5
    assert a != ev.choose_demonstrations(train, 5, seed=2, task="rte", index=3)
    assert a != ev.choose_demonstrations(train, 5, seed=1, task="rte", index=4)
    with pytest.raises(ConfigError):
        ev.choose_demonstrations(train[:2], 5, seed=1, task="rte", index=0)


def test_prompt_drops_demonstrations_from_the_left():
    full = [ev.EOT] + ENC.encode_ordinary(ev.build_prompt("rte", [D1, D2], Q))
    ids, used, cut = ev.fit_prompt("rte", [D1, D2], Q, ENC, context=len(full) + 1, answer_tokens=1)
    assert (ids, used, cut) == (full, 2, False)
    ids, used, cut = ev.fit_prompt("rte", [D1, D2], Q, ENC, context=len(full), answer_tokens=1)
    assert used == 1 and not cut
    assert ENC.decode(ids[1:]) == ev.build_prompt("rte", [D2], Q)  # the earliest demonstration went
    ids, used, cut = ev.fit_prompt("rte", [D1, D2], Q, ENC, context=8, answer_tokens=1)
    assert used == 0 and cut and len(ids) == 7 and ENC.decode(ids).endswith("answer:")


def test_fewshot_accuracy_baselines_and_interval():
    true_id = ENC.encode_ordinary(" True")[0]
    always_true = Bigram({}, default=true_id)
    train = [D1, D2, D1]
    dev = [Q, D2, D1, D2]
    r = ev.evaluate_fewshot(always_true, "rte", train, dev, k=1, seed=0, context=64, encoding=ENC, progress=False)
    assert r["acc"] == 0.5 and r["correct"] == 2 and r["n"] == 4
    assert r["predicted_share"] == {"entailment": 1.0, "not_entailment": 0.0}
    assert r["majority_label"] == "entailment" and r["majority_acc"] == 0.5 and r["chance_acc"] == 0.5
    lo, hi = r["acc_ci95"]
    assert lo < 0.5 < hi and lo == pytest.approx(0.1500, abs=1e-3) and hi == pytest.approx(0.8500, abs=1e-3)


# ------------------------------------------------------------------------------- reference model
def test_log_likelihoods_equal_huggingface_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = small_gpt(3)
    # random LayerNorm weights too, so a wrongly mapped LayerNorm cannot hide
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    cfg = GPT2Config(
        vocab_size=SMALL.vocab_size, n_positions=SMALL.block_size, n_embd=SMALL.n_embd, n_layer=SMALL.n_layer,
        n_head=SMALL.n_head, activation_function="gelu",  # nanoGPT's exact GELU, not HF's default tanh one
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    ours = model.state_dict()
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, p in hf.state_dict().items():
            if name in ours:
                w = ours[name]
                p.copy_(w.t() if name.endswith(transposed) else w)  # HF's Conv1D stores [in, out]
            elif name.endswith(".bias"):
                p.zero_()  # nanoGPT has no biases
            elif name.endswith(".attn.bias") or name.endswith("masked_bias"):
                pass  # causal-mask buffers of older transformers
            else:
                raise AssertionError(f"unmapped HF weight {name}")
    ids = [ev.EOT] + ENC.encode_ordinary("Hugging Face and nanoGPT should agree on every single token here.")
    x = torch.tensor([ids])
    with torch.no_grad():
        ours_logits = model(x)[0]
        hf_logits = hf(x).logits
    assert torch.allclose(ours_logits, hf_logits, atol=1e-4), (ours_logits - hf_logits).abs().max()
    # and the scores the evaluation computes (sum of log-probs of a continuation) agree to 1e-4 nats
    ctx, cont = ids[:8], ids[8:]
    ours_lp = ev.score_continuations(model, [(ctx, cont)], context=64)[0][0]
    hf_lp = float(torch.log_softmax(hf_logits[0, 7:-1, :N_VOCAB].double(), -1).gather(
        -1, torch.tensor(cont).unsqueeze(-1)).sum())
    assert ours_lp == pytest.approx(hf_lp, abs=1e-4)


# --------------------------------------------------------------------------- driver and outputs
def test_unknown_task_lists_valid_ones():
    with pytest.raises(ConfigError, match="lambada.*mrpc"):
        ev.parse_tasks("lambada,hellaswag")
    assert ev.parse_tasks("all") == list(ev.DEFAULT_TASKS)
    assert ev.parse_tasks("ptb,all") == ["ptb"] + [t for t in ev.DEFAULT_TASKS if t != "ptb"]


def test_context_longer_than_block_is_refused():
    with pytest.raises(ConfigError, match="block_size"):
        ev.evaluate_model(Uniform(), "ptb", context=128, progress=False, encoding=ENC)


def test_evaluate_model_smoke_all_tasks(with_shared_data):
    model = small_gpt(4)
    model.train()
    r = ev.evaluate_model(model, "all", max_examples=4, max_tokens=150, k_shot=2, progress=False, encoding=ENC)
    assert model.training  # mode restored
    assert list(r["tasks"]) == list(ev.DEFAULT_TASKS)
    for name, m in r["tasks"].items():
        assert m["n"] > 0 and m["time_s"] >= 0, name
    assert r["tasks"]["ptb"]["truncated"] and r["tasks"]["rte"]["n"] == 4
    assert r["protocol"]["context"] == 64 and r["protocol"]["stride"] == 32
    json.dumps(r, allow_nan=False)  # JSON-ready


def test_write_results_is_atomic_and_overwrites(tmp_path):
    p = ev.write_results(tmp_path / "run", {"tasks": {"x": 1}})
    assert p == tmp_path / "run" / "eval.json" and json.loads(p.read_text()) == {"tasks": {"x": 1}}
    ev.write_results(tmp_path / "run", {"tasks": {"x": 2}})
    assert json.loads(p.read_text()) == {"tasks": {"x": 2}}
    assert sorted(x.name for x in (tmp_path / "run").iterdir()) == ["eval.json"]  # no temporary left


def _stored_run(tmp_path: Path, seed: int = 0, ckpt_seed: int | None = None, done: bool = True) -> Path:
    """A run folder of the real run store holding an untrained smoke GPT (checkpoint as mstlib.train writes
    it); ``ckpt_seed`` writes the checkpoint of another config under this run's id."""
    from mstlib import presets
    from mstlib.results import RunStore, atomic_write_json
    from mstlib.checkpoint import save_checkpoint

    run = presets.make("smoke", "dense", seed=seed)
    other = presets.make("smoke", "dense", seed=seed if ckpt_seed is None else ckpt_seed)
    store = RunStore(tmp_path / "results")  # checkpoints where the store puts them by default
    d = store.run_dir(run)
    atomic_write_json(d / "config.json", run.to_dict())
    if done:
        atomic_write_json(d / "done", {})
    torch.manual_seed(seed)
    model = GPT(run.model)
    save_checkpoint(store.checkpoint_path(run), {"config": other.to_dict(), "model_config": dataclasses.asdict(run.model),
                                                 "model": model.state_dict()})
    return d


def _cli_args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def test_cli_writes_eval_json_into_the_run_dir(tmp_path, capsys, with_shared_data):
    run = _stored_run(tmp_path)
    args = _cli_args(run_dir=run, tasks="rte,lambada", max_examples=3, k_shot=1, no_progress=True, device="cpu")
    assert ev.main(args) == 0
    r = json.loads((run / "eval.json").read_text())
    assert set(r["tasks"]) == {"rte", "lambada"} and r["source"] == str(run)
    assert "rte" in capsys.readouterr().out
    from mstlib.results import load_run_dir

    assert load_run_dir(run).eval == r  # the run store reads it back


def test_unfinished_run_and_checkpoint_mismatch_raise(tmp_path):
    run = _stored_run(tmp_path / "a", done=False)
    with pytest.raises(MstError, match="not finished"):
        ev.main(_cli_args(run_dir=run, tasks="ptb", device="cpu"))
    run = _stored_run(tmp_path / "b", ckpt_seed=1)  # checkpoint written for another config
    with pytest.raises(CheckpointError, match="different config"):
        ev.load_for_eval(run_dir=run)
    # weights that do not fit the model config stored in the checkpoint itself
    bad = GPT(SMALL).state_dict()
    bad["transformer.wpe.weight"] = torch.zeros(32, SMALL.n_embd)
    torch.save({"model_config": dataclasses.asdict(SMALL), "model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="wpe"):
        ev.load_for_eval(checkpoint=tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ev.load_for_eval(checkpoint=tmp_path / "missing.pt")
