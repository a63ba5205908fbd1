"""``mstlib._customop.custom_op``: eager calls skip the operator's dispatch, ``torch.compile`` sees one op."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mstlib._customop import custom_op

CALLS = []


@custom_op("mstlib_test::scale_add")
def scale_add(x: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    CALLS.append(torch.compiler.is_compiling())
    return x * a + y


@scale_add.register_fake
def _(x, y, a):
    return torch.empty_like(x)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_call_runs_the_implementation_directly():
    """Eagerly the dispatcher sees only the implementation's aten ops; through ``.op`` it sees the operator."""
    x, y = torch.randn(3), torch.randn(3)
    CALLS.clear()
    with _OpLog() as log:
        torch.testing.assert_close(scale_add(x, y, 2.0), 2 * x + y)
    assert CALLS == [False]
    assert not any("scale_add" in op for op in log.ops) and any("mul" in op for op in log.ops), log.ops
    with _OpLog() as log:
        torch.testing.assert_close(scale_add.op(x, y, 2.0), 2 * x + y)
    assert any("mstlib_test.scale_add" in op for op in log.ops), log.ops


def test_compiled_caller_sees_one_opaque_operator():
    """Under torch.compile the call goes through the operator (traced with the fake), so the compiled graph
    holds it as one node and the implementation runs only when the graph runs."""
    from torch._dynamo.testing import CompileCounterWithBackend

    backend = CompileCounterWithBackend("eager")
    fn = torch.compile(lambda x, y: scale_add(x, y, 3.0).relu(), backend=backend, fullgraph=True)
    x, y = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(fn(x, y), (3 * x + y).relu())
    assert backend.frame_count == 1
    targets = [str(n.target) for g in backend.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("mstlib_test.scale_add" in t for t in targets), targets
