import math

import pytest
import torch

from mstlib.config import MODEL_SIZES, ModelConfig
from mstlib.errors import CheckpointError, ConfigError
from mstlib.model import GPT, load_state_dict_checked, to_huggingface

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=101)


def test_paper_model_counts_like_nanogpt():
    with torch.device("meta"):
        m = GPT(MODEL_SIZES["paper"])
    # nanoGPT prints "number of parameters: 123.59M" for this model (wpe left out, wte counted once)
    n = m.num_params()
    assert round(n / 1e6, 2) == 123.59
    c = m.config
    assert 6 * n + 12 * c.n_layer * c.n_embd * c.block_size == 854_770_176


def test_weights_tied_and_initialised_as_nanogpt():
    torch.manual_seed(0)
    m = GPT(ModelConfig(n_layer=4, n_head=2, n_embd=64, block_size=32, vocab_size=500))
    assert m.transformer.wte.weight is m.lm_head.weight
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())
    proj = m.transformer.h[0].mlp.c_proj.weight
    fc = m.transformer.h[0].mlp.c_fc.weight
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert fc.std().item() == pytest.approx(0.02, rel=0.1)


def test_forward_shapes_loss_and_causality():
    torch.manual_seed(0)
    m = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    logits, loss = m(idx, idx)
    assert logits.shape == (3, 10, TINY.vocab_size) and loss.ndim == 0
    # changing a later token must not change earlier logits
    idx2 = idx.clone()
    idx2[:, 7] = (idx2[:, 7] + 1) % TINY.vocab_size
    l2, _ = m(idx2)
    assert torch.equal(logits[:, :7], l2[:, :7]) and not torch.equal(logits[:, 7:], l2[:, 7:])
    with pytest.raises(ValueError, match="longer than the context"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_attention_pattern_slot_is_used_per_layer():
    torch.manual_seed(0)
    m = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 8))
    ref, _ = m(idx)
    calls = []

    def causal(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    m.set_attention(causal, layers=[1])
    out, _ = m(idx)
    assert len(calls) == 1 and torch.allclose(out, ref, atol=1e-6)
    m.set_attention(None)
    assert all(b.attn.pattern is None for b in m.transformer.h)


def test_matches_huggingface_gpt2_logits():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = GPT(TINY).eval()
    with torch.no_grad():  # non-trivial LayerNorm weights so a wrong mapping shows
        for name, p in m.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.uniform_(0.5, 1.5)
    hf = to_huggingface(m)
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    ours, _ = m(idx)
    theirs = hf(idx).logits
    # float32, same operations in a different order (Conv1D's addmm vs Linear): tolerance 1e-5
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


def test_state_dict_mismatch_names_it():
    torch.manual_seed(0)
    m = GPT(TINY)
    other = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=101))
    with pytest.raises(CheckpointError, match="does not match"):
        load_state_dict_checked(other, m.state_dict(), "test")


def test_invalid_model_config():
    with pytest.raises(ConfigError, match="divisible"):
        GPT(ModelConfig(n_layer=1, n_head=3, n_embd=32, block_size=8))


def test_loss_only_forward_same_loss_and_gradients():
    torch.manual_seed(0)
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    grads = []
    for return_logits in (True, False):
        torch.manual_seed(1)
        m = GPT(TINY)
        logits, loss = m(idx, idx, return_logits=return_logits)
        assert (logits is None) == (not return_logits)
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in m.parameters()]))
    (l1, g1), (l2, g2) = grads
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    with pytest.raises(ValueError, match="pass targets"):
        GPT(TINY)(idx, return_logits=False)


def _backward_tangents(return_logits: bool) -> list[tuple[int, ...]]:
    """Shapes of the output gradients ("tangents") the compiled backward graph takes for a training forward
    (AOTAutograd, CPU)."""
    from torch._dynamo.backends.common import aot_autograd
    from functorch.compile import make_boxed_func

    shapes: list[tuple[int, ...]] = []

    def bw(gm, _):
        shapes.extend(tuple(n.meta["val"].shape) for n in gm.graph.nodes
                      if n.op == "placeholder" and n.name.startswith("tangents"))
        return make_boxed_func(gm)

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.compile(GPT(TINY), backend=aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm), bw_compiler=bw))
    idx = torch.randint(0, TINY.vocab_size, (2, 8))
    _, loss = m(idx, idx, return_logits=return_logits)
    loss.backward()
    torch._dynamo.reset()
    return shapes


def test_loss_only_forward_gives_the_compiled_backward_no_logits_gradient():
    # returned logits need a gradient input in the compiled backward (zeros when unused: a fill, and under
    # CUDA graphs a copy, of the step's largest tensor); the loss-only forward's backward takes the loss's only
    assert _backward_tangents(True) == [(2, 8, TINY.vocab_size), ()]
    assert _backward_tangents(False) == [()]
