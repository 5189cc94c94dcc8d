"""The seed APIs trace whole under torch.compile(fullgraph=True) (plans are built outside the graph)."""

import pytest
import torch

import batmobile_nn as bn


def _oeq_conv():
    problem = bn.TPProblem("4x0e+4x1o", "0e+1o", "4x0e+4x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True),
                                                               (1, 0, 1, "uvu", True), (1, 1, 0, "uvu", True)],
                           shared_weights=False)
    rows, cols = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([1, 2, 0, 3, 2])
    args = (torch.randn(4, 16), torch.randn(5, 4), torch.randn(5, problem.weight_numel), rows, cols)
    return bn.TensorProductConv(problem, deterministic=True), args


CASES = {
    "tensor_product": lambda: (bn.tensor_product, (torch.randn(5, 2, 16), torch.randn(5, 16), torch.randn(34, 2, 3))),
    "fused_sh_tp_simple": lambda: (bn.fused_sh_tp_simple, (torch.randn(5, 3), torch.randn(4, 16),
                                                           torch.tensor([0, 1, 2, 3, 0]))),
    "autograd.TensorProduct": lambda: (bn.autograd.TensorProduct.apply,
                                       (torch.randn(5, 2, 16), torch.randn(5, 16), torch.randn(34, 2, 3))),
    "TensorProductConv": _oeq_conv,
}


@pytest.mark.parametrize("case", CASES)
def test_compiles_fullgraph(case):
    torch.manual_seed(0)
    fn, args = CASES[case]()
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), fn(*args))
