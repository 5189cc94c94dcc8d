"""``torch.ops.batmobile.symmetric_contraction`` against a naive einsum over Kronecker powers of ``x``: values,
first and second derivatives (float32 and float64), the forces-training path, ``needs`` masks, opcheck on
the forward / backward / double-backward ops, and bad inputs. Needs no mace (the parity with mace's module
is in ``tests/nn/test_symmetric_contraction.py``)."""

from typing import List

import pytest
import torch

from batmobile_nn.ops import (symmetric_contraction, symmetric_contraction_backward,
                              symmetric_contraction_double_backward)

from ._compare import assert_close, assert_derivatives_match, derivatives, randn

ops = torch.ops.batmobile


def oracle(x, element, weight, u: List[torch.Tensor], correlations: List[int]):
    """``out[b, c, m] = sum_nu sum_{I, k} U[m, I, k] W[element[b], k, c] (x[b, c] (x) ... (x) x)[I]``."""
    n, C, L = x.shape
    outs, j, p = [], 0, 0
    for K in correlations:
        out = 0
        for nu in range(1, K + 1):
            X = x
            for _ in range(nu - 1):
                X = (X.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # [n, C, L**nu], i1 outermost
            P = u[j].shape[2]
            out = out + torch.einsum("mik,bci,bkc->bcm", u[j], X, weight[element, p:p + P])
            j, p = j + 1, p + P
        outs.append(out.reshape(n, -1))
    return torch.cat(outs, dim=-1)


class Case:
    """A problem: ``u`` (float64) and ``correlations``, ``C`` channels, ``E`` elements, ``n`` nodes."""

    def __init__(self, name, u, correlations, L, C=3, E=4, n=7):
        self.name, self.u, self.correlations, self.L, self.C, self.E, self.n = name, u, correlations, L, C, E, n
        self.n_params = sum(t.shape[2] for t in u)
        self.width = C * sum(u[j].shape[0] for j in _first_blocks(correlations))

    def __repr__(self):
        return self.name

    def inputs(self, dtype, seed=0, element_dtype=torch.int64):
        x, weight = randn([(self.n, self.C, self.L), (self.E, self.n_params, self.C)], dtype, seed)
        generator = torch.Generator().manual_seed(seed)
        element = torch.randint(0, self.E - 1, (self.n,), generator=generator).to(element_dtype)  # element E-1 absent
        return x, element, weight, [t.to(dtype) for t in self.u]


def _first_blocks(correlations):
    j = 0
    for K in correlations:
        yield j
        j += K


def _mace_like(name, irreps_in, outputs, correlation):
    """Real generalized Clebsch-Gordan tensors, as mace's Contraction holds them, in the op's layout (mace
    computes them; without mace, the e3nn 0.6 environment, these cases skip)."""
    try:
        from batmobile_nn.nn._mace_cg import u_matrix

        u = []
        for ir_out, dim in outputs:
            for nu in range(1, correlation + 1):
                U = u_matrix(irreps_in, ir_out, nu, torch.float64)
                u.append(U.reshape(dim, -1, U.shape[-1]))
    except ImportError:
        return pytest.param(None, id=name, marks=pytest.mark.skip(reason="needs mace-torch for real U tensors"))
    return Case(name, u, [correlation] * len(outputs), sum(2 * int(s[0]) + 1 for s in irreps_in.split("+")))


def _random(name, L, dims, correlations, seed):
    """Random (not symmetric) ``U``: the gradients must see only its symmetric part."""
    generator = torch.Generator().manual_seed(seed)
    u = []
    for D, K in zip(dims, correlations):
        for nu in range(1, K + 1):
            P = int(torch.randint(1, 4, (1,), generator=generator))
            u.append(torch.randn(D, L**nu, P, generator=generator, dtype=torch.float64))
    return Case(name, u, correlations, L)


CASES = [
    _mace_like("mp-large-like-corr3", "0e+1o+2e+3o", [("0e", 1), ("1o", 3), ("2e", 5)], 3),
    _mace_like("mp-medium-like-corr2", "0e+1o+2e+3o", [("0e", 1), ("1o", 3)], 2),
    _random("random-mixed", 4, [3, 1, 5], [2, 3, 1], seed=1),
]


def _fn(element, u, correlations, op=symmetric_contraction):
    return lambda x, weight: op(x, element, weight, u, correlations)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_oracle(case, dtype):
    """Values, gradients w.r.t. ``x`` and ``weight``, and the gradient of a random projection of those."""
    x, element, weight, u = case.inputs(dtype)
    ours = derivatives(_fn(element, u, case.correlations), [x, weight], round_to=dtype)
    reference = derivatives(_fn(element, case.u, case.correlations, oracle), [x.double(), weight.double()],
                            round_to=dtype)
    same_precision = None
    if dtype != torch.float64:
        same_precision = derivatives(_fn(element, u, case.correlations, oracle), [x, weight], round_to=dtype)
    assert_derivatives_match(ours, reference, dtype, same_precision, case.name)


def _forces_path(fn, x, weight, cotangent, projection):
    """Training on forces: ``dE/dx`` with ``create_graph``, then a loss on it differentiated w.r.t. ``x``, the
    weights and the cotangent (in MACE the cotangent depends on the readout's weights and features)."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    cotangent = cotangent.detach().requires_grad_()
    (grad_x,) = torch.autograd.grad(fn(x, weight), x, cotangent, create_graph=True)
    return [grad_x.detach(), *torch.autograd.grad((grad_x * projection).sum(), [x, weight, cotangent])]


def test_forces_path():
    case = CASES[0]
    if not isinstance(case, Case):
        pytest.skip("needs mace-torch for real U tensors")
    x, element, weight, u = case.inputs(torch.float64, seed=3)
    cotangent, projection = randn([(case.n, case.width), x.shape], torch.float64, 4)
    ours = _forces_path(_fn(element, u, case.correlations), x, weight, cotangent, projection)
    reference = _forces_path(_fn(element, u, case.correlations, oracle), x, weight, cotangent, projection)
    for what, a, b in zip(["grad_x", "d2/dx2", "d2/dxdw", "d2/dxdcotangent"], ours, reference):
        assert_close(a, b, torch.float64, what)


def test_needs_masks_and_int32_elements():
    case = CASES[2]
    x, element, weight, u = case.inputs(torch.float64, seed=5, element_dtype=torch.int32)
    grad_out, grad_grad_x = randn([(case.n, case.width), x.shape], torch.float64, 6)
    grad_grad_weight = randn([weight.shape], torch.float64, 7)[0]
    args = (element, weight, u, case.correlations)
    assert_close(symmetric_contraction(x, *args), oracle(x, element.long(), weight, u, case.correlations),
                 torch.float64, "int32 elements")
    full = symmetric_contraction_backward(grad_out, x, *args, [True, True])
    only_x = symmetric_contraction_backward(grad_out, x, *args, [True, False])
    only_w = symmetric_contraction_backward(grad_out, x, *args, [False, True])
    assert only_x[1].numel() == 0 and only_w[0].numel() == 0
    torch.testing.assert_close(only_x[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(only_w[1], full[1], rtol=0, atol=0)
    full2 = symmetric_contraction_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, *args, [True] * 3)
    for i in range(3):
        needs = [i == k for k in range(3)]
        part = symmetric_contraction_double_backward(grad_grad_x, grad_grad_weight, grad_out, x, *args, needs)
        torch.testing.assert_close(part[i], full2[i], rtol=0, atol=0)
    # an empty cotangent is zeros
    empty = torch.empty(0, dtype=torch.float64)
    a = symmetric_contraction_double_backward(grad_grad_x, empty, grad_out, x, *args, [True] * 3)
    b = symmetric_contraction_double_backward(grad_grad_x, torch.zeros_like(weight), grad_out, x, *args, [True] * 3)
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


def test_empty_and_single_element():
    case = CASES[2]
    x, element, weight, u = case.inputs(torch.float64)
    out = symmetric_contraction(x[:0], element[:0], weight, u, case.correlations)
    assert out.shape == (0, case.width)
    one = torch.zeros(case.n, dtype=torch.int64)
    assert_close(symmetric_contraction(x, one, weight, u, case.correlations),
                 oracle(x, one, weight, u, case.correlations), torch.float64, "one element")


def test_third_derivative_is_a_clear_error():
    case = CASES[2]
    x, element, weight, u = case.inputs(torch.float64)
    x.requires_grad_()
    out = symmetric_contraction(x, element, weight, u, case.correlations)
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="symmetric_contraction_double_backward"):
        torch.autograd.grad(g2.sum(), x)


def _leaves(tensors, requires_grad=True):
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


def test_opcheck(dtype):
    case = _random("small", 4, [1, 3], [2, 1], seed=8)
    case.n, case.E = 5, 3
    x, element, weight, u = case.inputs(dtype, seed=9)
    grad_out, ggx, ggw = randn([(case.n, case.width), x.shape, weight.shape], dtype, 10)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if dtype == torch.float64:
        utils += ("test_aot_dispatch_dynamic",)
    x, weight, grad_out = _leaves((x, weight, grad_out))
    rest = (u, case.correlations)
    torch.library.opcheck(ops.symmetric_contraction, (x, element, weight, *rest), test_utils=utils)
    torch.library.opcheck(ops.symmetric_contraction_backward, (grad_out, x, element, weight, *rest, [True, True]),
                          test_utils=utils)
    torch.library.opcheck(ops.symmetric_contraction_backward, (grad_out, x, element, weight, *rest, [False, True]),
                          test_utils=utils[:3])
    plain = _leaves((ggx, ggw, grad_out, x, weight), requires_grad=False)
    torch.library.opcheck(ops.symmetric_contraction_double_backward,
                          (*plain[:4], element, plain[4], *rest, [True, True, True]), test_utils=utils)


# ---------------------------------------------------------------- bad inputs
def _good():
    case = CASES[2]
    x, element, weight, u = case.inputs(torch.float64)
    return case, dict(x=x, element=element, weight=weight, u=u, correlations=case.correlations)


def _bad(**changes):
    case, args = _good()
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return args


@pytest.mark.parametrize("changes, match", [
    (dict(x=lambda a: a["x"][0]), "x must have 3 dimensions"),
    (dict(x=lambda a: a["x"][:, :, :3]), r"u\[0\] \(degree 1\) must have shape \[D=3, L\*\*1=3, P\]"),
    (dict(x=lambda a: a["x"][:, :2]), r"weight must have shape \[num_elements, num_params=\d+, mul=2\]"),
    (dict(x=lambda a: a["x"].float()), "weight is torch.float64 but x is torch.float32"),
    (dict(x=lambda a: a["x"].half()), "x must be float32 or float64"),
    (dict(weight=lambda a: a["weight"][:, 1:]), r"weight must have shape \[num_elements, num_params="),
    (dict(weight=lambda a: a["weight"].float()), "weight is torch.float32 but x is torch.float64"),
    (dict(u=lambda a: [t.float() for t in a["u"]]), r"u\[0\] is torch.float32 but x is torch.float64"),
    (dict(u=lambda a: a["u"][:-1]), r"u must hold sum\(correlations\) = 6 tensors, got 5"),
    (dict(u=lambda a: [a["u"][1]] + a["u"][1:]), r"u\[0\] \(degree 1\) must have shape"),
    (dict(correlations=[2, 3, 4]), r"correlations must be a non-empty list of values in \[1, 3\]"),
    (dict(correlations=[]), "correlations must be a non-empty list"),
    (dict(element=lambda a: a["element"].double()), "element must be int32 or int64"),
    (dict(element=lambda a: a["element"][1:]), r"element must have shape \[n_nodes=7\]"),
    (dict(element=lambda a: a["element"].to("meta")), "element is on meta but x is on cpu"),
    (dict(element=lambda a: torch.full_like(a["element"], 4)), r"element holds indices in \[4, 4\] but weight has 4"),
    (dict(element=lambda a: torch.full_like(a["element"], -1)), r"element holds indices in \[-1, -1\]"),
])
def test_bad_inputs(changes, match):
    args = _bad(**changes)
    with pytest.raises(ValueError, match=match):
        symmetric_contraction(**args)


def test_bad_backward_inputs():
    case, args = _good()
    rest = (args["x"], args["element"], args["weight"], args["u"], args["correlations"])
    grad_out = torch.randn(case.n, case.width, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"grad_out must have last dimension {case.width}"):
        symmetric_contraction_backward(grad_out[:, 1:], *rest, [True, True])
    with pytest.raises(ValueError, match="grad_out is torch.float32 but x is torch.float64"):
        symmetric_contraction_backward(grad_out.float(), *rest, [True, True])
    with pytest.raises(ValueError, match="needs must hold 2 booleans"):
        symmetric_contraction_backward(grad_out, *rest, [True])
    with pytest.raises(ValueError, match="grad_grad_x must have shape"):
        symmetric_contraction_double_backward(args["x"][1:], args["weight"], grad_out, *rest, [True] * 3)
    with pytest.raises(ValueError, match="needs must hold 3 booleans"):
        symmetric_contraction_double_backward(args["x"], args["weight"], grad_out, *rest, [True] * 2)
