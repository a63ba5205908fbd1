"""``custom_op``: a PyTorch custom operator that eager callers reach without the operator's dispatch.

Our GPU kernels (the strided far part, the cuDNN band) are custom operators so that a model compiled as a
whole calls each as one opaque op. In eager mode the operator's Python dispatch costs host time on every
call (on an H200 the cuDNN band's forward took 0.11 ms of host time per call through its operator against
0.014 ms for the graph execution itself: ``tools/gpu/cudnn_probe2.py``), which the small models' steps,
bound by the host, pay in full. So the function this decorator returns calls the operator only while
``torch.compile`` traces, and the implementation directly otherwise (the operator would run the same code).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import torch


def custom_op(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Like ``torch.library.custom_op(name, mutates_args=...)``; the result also has ``.op`` (the operator)
    and ``.register_fake``."""

    def wrap(fn: Callable) -> Callable:
        op = torch.library.custom_op(name, mutates_args=tuple(mutates_args))(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return (op if torch.compiler.is_compiling() else fn)(*args, **kwargs)

        call.op = op
        call.register_fake = op.register_fake
        return call

    return wrap
