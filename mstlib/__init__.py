"""mstlib: Mixed Sparsity Training (Hu, Li, Wang, Huang; TMLR 2025; arXiv 2408.11746), reproduced.

Modules, one idea each: ``config`` (typed configs), ``presets`` (smoke/mini/paper x methods), ``model``
(nanoGPT's GPT), ``masks`` (sparse weights over dense storage), ``topology`` (drop and grow),
``schedule`` (sparsity variation, LR), ``attention``/``flash_split`` (hybrid sparse attention; the latter with
FlashAttention's sliding window and the Triton kernels of ``_far_triton``), ``flops`` (training-FLOP
accounting), ``tokenizer``/``corpus``/``evalsets`` (data), ``train``/``results``/``sweep`` (runs),
``evaluate`` (zero- and few-shot), ``benchmark``/``blocksparse`` (measured speed: step times, block-sparse
weights with their own kernels), ``plots``/``stats`` (for the notebooks).
"""

__version__ = "0.1.0"
