"""Bad inputs raise the documented ``ValueError``s (``batmobile_nn/ops/_checks.py``) before any work:
shapes, dtypes, devices (a ``meta`` tensor stands in for a second device on the CPU), index ranges,
unsorted receivers in deterministic mode, malformed plans, unsupported instructions."""

import pytest
import torch
from problems import GAPS_PROBLEM

from batmobile_nn.ops import _checks
from batmobile_nn.ops import (
    conv,
    conv_backward,
    make_plan,
    set_index_checks,
    spherical_harmonics,
    spherical_harmonics_backward,
    spherical_harmonics_double_backward,
    tensor_product,
    tensor_product_backward,
)

PLAN = GAPS_PROBLEM.plan()
P, CG = PLAN.plan_list, PLAN.cg_list
D1, D2, D_OUT = GAPS_PROBLEM.irreps_in1.dim, GAPS_PROBLEM.irreps_in2.dim, GAPS_PROBLEM.irreps_out.dim
W = PLAN.weight_numel
N_NODES, N_EDGES = 4, 5


def _randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# ---------------------------------------------------------------- spherical harmonics
@pytest.mark.parametrize("vectors, ls, normalization, match", [
    (_randn(4, 2), [1], "component", "vectors must have last dimension 3"),
    (_randn(4), [1], "component", "vectors must have 2 dimensions"),
    (_randn(4, 3, dtype=torch.float16), [1], "component", "vectors must be float32 or float64"),
    (torch.ones(4, 3, dtype=torch.int64), [1], "component", "vectors must be float32 or float64"),
    (_randn(4, 3), [], "component", "ls must be a non-empty list of degrees in \\[0, 8\\]"),
    (_randn(4, 3), [-1, 2], "component", "ls must be a non-empty list"),
    (_randn(4, 3), [9], "component", "ls must be a non-empty list"),
    (_randn(4, 3), [1], "unit", "normalization must be 'integral', 'component' or 'norm'"),
])
def test_spherical_harmonics(vectors, ls, normalization, match):
    with pytest.raises(ValueError, match=match):
        spherical_harmonics(vectors, ls, True, normalization)


def test_spherical_harmonics_backward_ops():
    vectors = _randn(4, 3)
    with pytest.raises(ValueError, match="grad_sh must have last dimension 4"):
        spherical_harmonics_backward(_randn(4, 5), vectors, [0, 1], True, "component")
    with pytest.raises(ValueError, match="grad_sh is torch.float32 but vectors is torch.float64"):
        spherical_harmonics_backward(_randn(4, 4, dtype=torch.float32), vectors, [0, 1], True, "component")
    with pytest.raises(ValueError, match="grad_sh is on meta but vectors is on cpu"):
        spherical_harmonics_backward(_randn(4, 4).to("meta"), vectors, [0, 1], True, "component")
    with pytest.raises(ValueError, match="grad_grad_vectors must have last dimension 3"):
        spherical_harmonics_double_backward(_randn(4, 2), _randn(4, 4), vectors, [0, 1], True, "component")


# ---------------------------------------------------------------- tensor product
def _tp_inputs(batch=3):
    return _randn(batch, D1), _randn(batch, D2), _randn(batch, W)


@pytest.mark.parametrize("change, match", [
    (lambda a, b, w: (a[:, :-1], b, w), f"in1 must have last dimension {D1}"),
    (lambda a, b, w: (a, b[:, 1:], w), f"in2 must have last dimension {D2}"),
    (lambda a, b, w: (a[None], b, w), "in1 must have 2 dimensions"),
    (lambda a, b, w: (a, b[:2], w), "in1 and in2 need the same batch size, got 3 and 2"),
    (lambda a, b, w: (a, b, w[:, 1:]), f"weight must have shape \\[batch=3, weight_numel={W}\\]"),
    (lambda a, b, w: (a, b, w[:2]), "weight must have shape \\[batch=3"),
    (lambda a, b, w: (a, b, w[0, 1:]), f"shared weight must have shape \\[{W}\\]"),
    (lambda a, b, w: (a, b, w[None]), "weight must be 1-D \\(shared\\) or 2-D"),
    (lambda a, b, w: (a.float(), b, w), "in2 is torch.float64 but in1 is torch.float32"),
    (lambda a, b, w: (a, b, w.float()), "weight is torch.float32 but in1 is torch.float64"),
    (lambda a, b, w: (a.half(), b.half(), w.half()), "in1 must be float32 or float64, got torch.float16"),
    (lambda a, b, w: (a, b.to("meta"), w), "in2 is on meta but in1 is on cpu"),
    (lambda a, b, w: (a, b, w.to("meta")), "weight is on meta but in1 is on cpu"),
])
def test_tensor_product(change, match):
    with pytest.raises(ValueError, match=match):
        tensor_product(*change(*_tp_inputs()), P, CG)


@pytest.mark.parametrize("plan, cg", [
    (P[:-1], CG),  # truncated
    (P[:3], CG),  # shorter than the header
    ([P[0] + 1] + P[1:], CG),  # header says one more instruction
], ids=["truncated", "no-header", "wrong-count"])
def test_malformed_plan(plan, cg):
    with pytest.raises(ValueError, match="malformed plan: build it with batmobile_nn.ops.make_plan"):
        tensor_product(*_tp_inputs(), plan, cg)


def test_cg_table_too_short():
    with pytest.raises(ValueError, match="malformed plan: cg table is shorter than the plan needs"):
        tensor_product(*_tp_inputs(), P, CG[:-1])
    with pytest.raises(ValueError, match="malformed plan: cg table is shorter"):
        conv(_randn(N_NODES, D1), _randn(N_EDGES, D2), _randn(N_EDGES, W), *_graph(), None, P, CG[:5], False)


def test_tensor_product_backward():
    a, b, w = _tp_inputs()
    with pytest.raises(ValueError, match=f"grad_out must have last dimension {D_OUT}"):
        tensor_product_backward(_randn(3, D_OUT + 1), a, b, w, P, CG, [True, True, True])
    with pytest.raises(ValueError, match="grad_out must be \\[batch, dim_out\\] and needs 3 booleans"):
        tensor_product_backward(_randn(2, D_OUT), a, b, w, P, CG, [True, True, True])
    with pytest.raises(ValueError, match="needs 3 booleans"):
        tensor_product_backward(_randn(3, D_OUT), a, b, w, P, CG, [True, True])
    with pytest.raises(ValueError, match="grad_out is torch.float32 but in1 is torch.float64"):
        tensor_product_backward(_randn(3, D_OUT, dtype=torch.float32), a, b, w, P, CG, [True, True, True])


# ---------------------------------------------------------------- convolution
def _graph(dtype=torch.int64):
    return torch.tensor([0, 1, 2, 3, 0], dtype=dtype), torch.tensor([1, 1, 2, 3, 3], dtype=dtype)


def _conv(node_feats=None, edge_attrs=None, weight=None, sender=None, receiver=None, sender_perm=None,
          deterministic=False):
    default_sender, default_receiver = _graph()
    return conv(_randn(N_NODES, D1) if node_feats is None else node_feats,
                _randn(N_EDGES, D2) if edge_attrs is None else edge_attrs,
                _randn(N_EDGES, W) if weight is None else weight,
                default_sender if sender is None else sender, default_receiver if receiver is None else receiver,
                sender_perm, P, CG, deterministic)


@pytest.mark.parametrize("kwargs, match", [
    (dict(node_feats=_randn(N_NODES, D1 + 1)), f"node_feats must have last dimension {D1}"),
    (dict(edge_attrs=_randn(N_EDGES, D2 - 1)), f"edge_attrs must have last dimension {D2}"),
    (dict(edge_attrs=_randn(N_EDGES, D2, dtype=torch.float32)), "edge_attrs is torch.float32 but node_feats is"),
    (dict(weight=_randn(N_EDGES - 1, W)), f"weight must have shape \\[n_edges={N_EDGES}, weight_numel={W}\\]"),
    (dict(sender=torch.zeros(N_EDGES)), "sender must be int32 or int64, got torch.float32"),
    (dict(receiver=torch.zeros(N_EDGES, dtype=torch.int16)), "receiver must be int32 or int64, got torch.int16"),
    (dict(receiver=torch.zeros(N_EDGES - 1, dtype=torch.int64)),
     f"receiver must have shape \\[n_edges={N_EDGES}\\]"),
    (dict(sender=torch.zeros(1, N_EDGES, dtype=torch.int64)), f"sender must have shape \\[n_edges={N_EDGES}\\]"),
    (dict(sender=torch.zeros(N_EDGES, dtype=torch.int64).to("meta")),
     "sender is on meta but node_feats is on cpu"),
    (dict(sender=torch.tensor([0, 1, -1, 3, 0])), f"sender holds indices in \\[-1, 3\\] but there are {N_NODES} nodes"),
    (dict(receiver=torch.tensor([0, 1, 2, 3, N_NODES])), f"receiver holds indices in \\[0, {N_NODES}\\]"),
    (dict(sender=torch.tensor([0, 1, 2, 3, 0], dtype=torch.int32),
          receiver=torch.tensor([0, 1, 2, 3, 9], dtype=torch.int32)), "receiver holds indices in \\[0, 9\\]"),
    (dict(receiver=torch.tensor([0, 2, 1, 3, 3]), deterministic=True),
     "deterministic=True needs edges sorted by receiver"),
    (dict(sender_perm=torch.arange(N_EDGES - 1)),
     f"sender_perm must be an int32/int64 tensor of shape \\[{N_EDGES}\\]"),
    (dict(sender_perm=torch.arange(N_EDGES).float()), "sender_perm must be an int32/int64 tensor"),
    (dict(sender_perm=torch.arange(N_EDGES).to("meta")), "sender_perm is on meta but the features are on cpu"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_conv(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _conv(**kwargs)


def test_conv_backward():
    node_feats, edge_attrs, weight = _randn(N_NODES, D1), _randn(N_EDGES, D2), _randn(N_EDGES, W)
    sender, receiver = _graph()
    args = (node_feats, edge_attrs, weight, sender, receiver, None, P, CG, False)
    with pytest.raises(ValueError, match="grad_out must be \\[n_nodes, dim_out\\] and needs 3 booleans"):
        conv_backward(_randn(N_NODES + 1, D_OUT), *args, [True, True, True])
    with pytest.raises(ValueError, match=f"grad_out must have last dimension {D_OUT}"):
        conv_backward(_randn(N_NODES, 1), *args, [True, True, True])
    with pytest.raises(ValueError, match="receiver holds indices"):
        conv_backward(_randn(N_NODES, D_OUT), node_feats, edge_attrs, weight, sender, receiver + 1, None, P, CG,
                      False, [True, True, True])


def test_index_checks_can_be_turned_off():
    """``set_index_checks(False)`` skips the data-reading checks (for CUDA graphs): unsorted receivers pass."""
    unsorted = torch.tensor([0, 2, 1, 3, 3])
    with pytest.raises(ValueError, match="sorted by receiver"):
        _conv(receiver=unsorted, deterministic=True)
    previous = set_index_checks(False)
    try:
        assert previous is True
        out = _conv(receiver=unsorted, deterministic=True)
        assert out.shape == (N_NODES, D_OUT)
    finally:
        assert set_index_checks(previous) is False
    with pytest.raises(ValueError, match="sorted by receiver"):
        _conv(receiver=unsorted, deterministic=True)


def test_sorted_receivers_are_remembered_until_changed():
    """A receiver tensor found sorted is not read again (one synchronization per graph on the GPU, not per call),
    until it changes in place."""
    receiver = torch.tensor([0, 1, 1, 3, 3])
    _conv(receiver=receiver, deterministic=True)
    assert _checks._key(receiver, -1) in _checks._checked
    receiver.data[1] = 2  # through .data: the version counter does not move, so the remembered check is used
    _conv(receiver=receiver, deterministic=True)  # (no error: the data was not read again)
    receiver[1] = 2  # in place: [0, 2, 1, 3, 3], unsorted, a new version of the same tensor
    with pytest.raises(ValueError, match="sorted by receiver"):
        _conv(receiver=receiver, deterministic=True)


# ---------------------------------------------------------------- make_plan
@pytest.mark.parametrize("irreps_in1, irreps_out, instruction, match", [
    ("2x1o", "2x1o", (0, 0, 0, "uuu", True), "connection mode 'uuu' is not supported; batmobile_nn implements"),
    ("2x1o", "2x1o", (0, 0, 0, "uvv", True), "connection mode 'uvv' is not supported"),
    ("2x1o", "2x1o", (0, 0, 0, "uvw", False), "'uvw' needs weights \\(has_weight=True\\), as in e3nn"),
    ("2x1o", "3x1o", (0, 0, 0, "uvu", True), "'uvu' needs mul_out == mul_in1 \\(3 != 2\\)"),
    ("2x1o", "2x1e", (0, 0, 0, "uvu", True), "1e is not in 1o x 0e"),
    ("2x1o", "2x1o", (1, 0, 0, "uvu", True), "index 1 is out of range for irreps_in1 2x1o"),
    ("2x1o", "2x1o", (0, 0, -2, "uvu", True), "index -2 is out of range for irreps_out 2x1o"),
])
def test_make_plan(irreps_in1, irreps_out, instruction, match):
    with pytest.raises(ValueError, match=match):
        make_plan(irreps_in1, "1x0e", irreps_out, [instruction])


def test_an_index_tensor_changed_in_place_is_checked_again():
    """Index checks remember the tensors they passed (one synchronization per edge_index and step on the GPU);
    an in-place change bumps the tensor's version, so the changed values are checked anew."""
    sender, receiver = _graph()
    _conv(sender=sender, receiver=receiver)
    _conv(sender=sender, receiver=receiver)  # remembered: passes again
    receiver[2] = N_NODES
    with pytest.raises(ValueError, match=f"receiver holds indices in \\[1, {N_NODES}\\]"):
        _conv(sender=sender, receiver=receiver)
    with pytest.raises(ValueError, match="receiver holds indices"):
        _conv(sender=sender, receiver=receiver)  # a failed check is not remembered


def test_a_new_tensor_on_reused_memory_is_checked_again():
    """A tensor wrapping memory that an earlier, checked tensor wrapped (numpy, DLPack) has the same pointer, shape
    and version: the base object's identity tells them apart."""
    sender, receiver = _graph()
    values = receiver.numpy().copy()
    _conv(sender=sender, receiver=torch.from_numpy(values))
    values[2] = N_NODES  # written behind torch's back: no version bump
    with pytest.raises(ValueError, match="receiver holds indices"):
        _conv(sender=sender, receiver=torch.from_numpy(values))
