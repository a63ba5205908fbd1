"""mstlib: Mixed Sparsity Training (Hu, Li, Wang, Huang; TMLR 2025; arXiv 2408.11746), reproduced.

One idea per module, in floors whose imports only point down (``python tools/import_graph.py`` draws them;
``tests/test_house.py`` fails on an import circle or an import that points up):

* ground: ``errors``, ``strict`` and ``config`` (typed configs), ``provenance``, ``runlock``, ``workers``, ``stats``;
* ``data/``: corpora (``catalogue``, ``tokens``, ``preparation``, ``pack``), ``tokenizer``, ``evalsets``;
* the paper's ideas: ``model`` (nanoGPT's GPT), ``masks``, ``topology`` (drop and grow), ``schedule``
  (sparsity variation, LR), ``attention/`` (patterns and backends; GPU code in ``kernels/``), ``flops``,
  ``presets``, ``ladder``;
* running: ``train`` (the loop; its parts in ``training``, its named steps in ``train_steps``),
  ``checkpoint``, ``results`` (the run store), ``sweep``, ``benchmark``/``benchstore``, ``gpu`` (GPU calls
  as plan files); ``experimental/`` (block-sparse layers only a benchmark uses);
* evaluation: ``evaluate`` (``scoring``, ``fewshot``);
* the book's helpers: ``experiments``, ``pipeline``, ``tables``, ``plots``, ``verdicts``, ``claims``,
  ``fair_test``, ``notebook``, ``describe`` and ``commands`` (command lines), ``cli``.
"""

from .provenance import MSTLIB_VERSION as __version__  # noqa: F401
