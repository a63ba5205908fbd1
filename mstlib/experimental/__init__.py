"""Experiments the book does not need: the block-sparse linear layers (:mod:`.blocksparse`), measured only by
``benchmarks/block_sparse.py``."""
