"""``FusedInteraction`` against mace's interaction blocks (residual and first layer): outputs, first and second
derivatives of every input and parameter, float32 and float64, ``state_dict`` both ways, TorchScript, what autograd
keeps, and the blocks it refuses."""

import copy

import pytest
import torch
from e3nn import o3

from batmobile_nn.nn import FusedInteraction

blocks = pytest.importorskip("mace.modules.blocks")

N_NODES, N_EDGES, N_ELEMENTS = 6, 20, 3


def _block(residual: bool, dtype, seed=0):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn keeps its constants in the default dtype
    try:
        torch.manual_seed(seed)
        cls = blocks.RealAgnosticResidualInteractionBlock if residual else blocks.RealAgnosticInteractionBlock
        node_irreps = o3.Irreps("8x0e+8x1o") if residual else o3.Irreps("8x0e")
        block = cls(node_attrs_irreps=o3.Irreps(f"{N_ELEMENTS}x0e"), node_feats_irreps=node_irreps,
                    edge_attrs_irreps=o3.Irreps.spherical_harmonics(2), edge_feats_irreps=o3.Irreps("4x0e"),
                    target_irreps=o3.Irreps("8x0e+8x1o+8x2e"), hidden_irreps=o3.Irreps("8x0e+8x1o"),
                    avg_num_neighbors=3.0, radial_MLP=[16, 16])
        for parameter in block.parameters():  # away from mace's initialization (a zero-init layer hides bugs)
            parameter.data.normal_()
    finally:
        torch.set_default_dtype(previous)
    return block


def _inputs(block, dtype, seed=1):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    node_attrs = torch.nn.functional.one_hot(torch.randint(0, N_ELEMENTS, (N_NODES,), generator=generator),
                                             N_ELEMENTS).to(dtype)
    edge_index = torch.randint(0, N_NODES, (2, N_EDGES), generator=generator)
    cutoff = torch.rand(N_EDGES, 1, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    return dict(node_attrs=node_attrs, node_feats=randn(N_NODES, block.node_feats_irreps.dim),
                edge_attrs=randn(N_EDGES, block.edge_attrs_irreps.dim), edge_feats=randn(N_EDGES, 4),
                edge_index=edge_index, cutoff=cutoff)


def _derivatives(module, inputs):
    """Outputs, gradients of the differentiable inputs and the parameters, and the gradients of a projection of the
    input gradients (what a force loss differentiates)."""
    message, sc = module(**inputs)
    outputs = [message] + ([sc] if sc is not None else [])
    wrt = [inputs[k] for k in ("node_feats", "edge_attrs", "edge_feats", "cutoff")]
    params = [p for _, p in sorted(module.named_parameters())]
    generator = torch.Generator().manual_seed(2)
    cotangents = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.dtype) for o in outputs]
    grads = torch.autograd.grad(outputs, wrt + params, cotangents, create_graph=True, allow_unused=True)
    first = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, wrt + params)]
    loss = sum((g.square()).sum() for g in first[:len(wrt)])
    second = torch.autograd.grad(loss, wrt + params, allow_unused=True)
    second = [g if g is not None else torch.zeros_like(t) for g, t in zip(second, wrt + params)]
    return [o.detach() for o in outputs] + [g.detach() for g in first] + list(second)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "first-layer"])
def test_matches_the_mace_block(residual, dtype):
    stock = _block(residual, dtype)
    fused = FusedInteraction.from_mace(copy.deepcopy(stock))
    assert fused.residual is residual
    inputs = _inputs(stock, dtype)
    expected, got = _derivatives(stock, inputs), _derivatives(fused, inputs)
    assert len(expected) == len(got)
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=5e-4, atol=5e-4)
    for i, (a, b) in enumerate(zip(got, expected)):
        scale = max(b.abs().max().item(), 1.0)
        torch.testing.assert_close(a / scale, b / scale, **tolerance, msg=lambda m: f"item {i}: {m}")


def test_state_dict_both_ways():
    stock = _block(True, torch.float64)
    fused = FusedInteraction.from_mace(copy.deepcopy(stock))
    assert list(fused.state_dict()) == list(stock.state_dict())  # and in its order, as parameters() (optimizers)
    assert [name for name, _ in fused.named_parameters()] == [name for name, _ in stock.named_parameters()]
    other = _block(True, torch.float64, seed=5)
    fused.load_state_dict(other.state_dict(), strict=True)  # stock -> ours
    inputs = _inputs(stock, torch.float64)
    torch.testing.assert_close(fused(**inputs)[0], other(**inputs)[0], rtol=1e-12, atol=1e-12)
    stock.load_state_dict(fused.state_dict(), strict=True)  # ours -> stock
    torch.testing.assert_close(stock(**inputs)[0], other(**inputs)[0], rtol=1e-12, atol=1e-12)


def test_constructor_builds_the_mace_block():
    torch.manual_seed(3)
    ours = FusedInteraction(o3.Irreps("2x0e"), o3.Irreps("4x0e"), o3.Irreps("0e+1o"), o3.Irreps("3x0e"),
                            o3.Irreps("4x0e+4x1o"), o3.Irreps("4x0e"), 2.0, radial_MLP=[8], residual=False)
    assert not ours.residual and ours.avg_num_neighbors == 2.0 and ours.radial_MLP == [8]
    stock = blocks.RealAgnosticInteractionBlock(o3.Irreps("2x0e"), o3.Irreps("4x0e"), o3.Irreps("0e+1o"),
                                                o3.Irreps("3x0e"), o3.Irreps("4x0e+4x1o"), o3.Irreps("4x0e"), 2.0,
                                                radial_MLP=[8])
    stock.load_state_dict(ours.state_dict(), strict=True)
    args = (torch.eye(2)[[0, 1, 1]], torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 3),
            torch.tensor([[0, 1, 2, 2, 0], [1, 2, 0, 1, 1]]))
    torch.testing.assert_close(ours(*args)[0], stock(*args)[0])


def test_torchscript_equals_eager():
    fused = FusedInteraction.from_mace(_block(True, torch.float64))
    inputs = _inputs(fused, torch.float64)
    scripted = torch.jit.script(fused)
    for a, b in zip(scripted(**inputs), fused(**inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_keeps_the_radial_features_not_the_weights():
    """Autograd never keeps the ``[n_edges, weight_numel]`` weights the stock block keeps (conv_radial keeps the
    radial MLP's hidden features instead: tests/ops/test_conv_radial.py)."""
    stock = _block(True, torch.float64)
    fused = FusedInteraction.from_mace(copy.deepcopy(stock))
    weights_shape = (N_EDGES, stock.conv_tp.weight_numel)

    def saved_shapes(module):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            module(**_inputs(stock, torch.float64))
        return shapes
    assert weights_shape in saved_shapes(stock)  # the check can fail
    assert weights_shape not in saved_shapes(fused)


def test_refusals():
    stock = _block(True, torch.float64)
    with pytest.raises(ValueError, match="mirrors mace's RealAgnosticResidualInteractionBlock"):
        FusedInteraction.from_mace(torch.nn.Linear(2, 2))
    fused = FusedInteraction.from_mace(stock)
    with pytest.raises(NotImplementedError, match="LAMMPS"):
        fused(**_inputs(stock, torch.float64), lammps_class=object())
