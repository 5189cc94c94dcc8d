"""``patch(model, fuse_interactions=True)``: MACE's interaction blocks become ``FusedInteraction``s. Energies,
forces, stress and a training step's gradients against stock MACE (float64 and float32), the ``state_dict``,
unpatching (also of copies and pickles), the ``unpatched`` context, and the blocks it leaves alone. The default,
``fuse_interactions="auto"``: in every block but the last, the radial MLP's last layer in the convolution while the
parameters are frozen; the blocks stay mace's."""

import copy
import io
import warnings

import pytest
import torch

pytest.importorskip("mace")

import batmobile_nn  # noqa: E402
from batmobile_nn.nn import FusedInteraction  # noqa: E402
from batmobile_nn.patches import UnsupportedBlockWarning, _fusion, is_patched  # noqa: E402
from batmobile_nn.patches.mace import unpatched  # noqa: E402
from mace_cases import (assert_outputs_close, build_model, bulk_structure, default_dtype, evaluate,  # noqa: E402
                        make_batch, molecule_structure)

ARCH = dict(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=2, first="RealAgnosticInteractionBlock")


@pytest.fixture(scope="module")
def stock_model():
    return build_model(**ARCH)


@pytest.fixture(scope="module")
def batch():
    return make_batch([bulk_structure(), molecule_structure()])


@pytest.fixture
def model(stock_model):
    return copy.deepcopy(stock_model)


def _fused_count(model):
    return sum(isinstance(block, FusedInteraction) for block in model.interactions)


def _training_gradients(model, batch):
    """The gradients of a force loss (second derivatives through the forces) w.r.t. every parameter, by name."""
    out = model(batch.to_dict(), training=True, compute_force=True)
    loss = out["energy"].square().sum() + out["forces"].square().sum()
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, p, g in zip(names, params, grads)}


def test_fused_model_equals_stock(model, stock_model, batch):
    stock = evaluate(stock_model, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedBlockWarning)
        batmobile_nn.patch(model, fuse_interactions=True)
    assert _fused_count(model) == 2 and is_patched(model)
    assert model.state_dict().keys() == stock_model.state_dict().keys()
    assert_outputs_close(evaluate(model, batch), stock, 1e-10)
    expected, got = _training_gradients(stock_model, batch), _training_gradients(model, batch)
    assert expected.keys() == got.keys()
    for name in expected:
        scale = max(expected[name].abs().max().item(), 1e-12)
        assert (got[name] - expected[name]).abs().max().item() / scale < 1e-9, name
    model.float()  # converted while fused, then compared with the stock float32 model
    stock32 = copy.deepcopy(stock_model).float()
    batch32 = make_batch([bulk_structure(), molecule_structure()], dtype=torch.float32)
    assert_outputs_close(evaluate(model, batch32), evaluate(stock32, batch32), 1e-5)


def test_unpatch_restores_stock_blocks(model, stock_model, batch):
    stock_blocks = list(model.interactions)
    batmobile_nn.patch(model, fuse_interactions=True)
    batmobile_nn.patch(model, fuse_interactions=True)  # twice: nothing more
    assert _fused_count(model) == 2
    batmobile_nn.unpatch(model)
    assert list(model.interactions) == stock_blocks and not is_patched(model)
    assert type(model.interactions[0].conv_tp).__name__ == "TensorProduct"
    assert_outputs_close(evaluate(model, batch), evaluate(stock_model, batch), 1e-12)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert b"batmobile" not in buffer.getvalue()


def test_copies_pickles_and_the_unpatched_context(model, batch, stock_model):
    batmobile_nn.patch(model, fuse_interactions=True)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert _fused_count(other) == 2
        batmobile_nn.unpatch(other)
        assert _fused_count(other) == 0 and not is_patched(other)
        assert_outputs_close(evaluate(other, batch), evaluate(stock_model, batch), 1e-12)
    with unpatched(model):
        assert _fused_count(model) == 0 and not is_patched(model)
    assert _fused_count(model) == 2  # fused again, as it was


def test_attributes_set_while_fused_come_back(model, batch):
    """mace's fine-tuning sets ``avg_num_neighbors`` on live models: a value set while fused stays after unpatching."""
    batmobile_nn.patch(model, fuse_interactions=True)
    for block in model.interactions:
        block.avg_num_neighbors = 20.0
    fused = evaluate(model, batch)
    with unpatched(model):
        assert [block.avg_num_neighbors for block in model.interactions] == [20.0, 20.0]
        assert_outputs_close(evaluate(model, batch), fused, 1e-10)


def test_blocks_it_cannot_fuse_are_named(monkeypatch):
    """Blocks of other classes are not fused (and not warned about); blocks whose radial MLP was not swapped are
    named in one warning; the rest of the model is patched."""
    model = build_model(hidden_irreps="4x0e+4x1o", interaction="RealAgnosticDensityInteractionBlock")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedBlockWarning)
        batmobile_nn.patch(model, fuse_interactions=True)
    assert _fused_count(model) == 0 and is_patched(model)
    from batmobile_nn.patches import _registry
    from batmobile_nn.patches.mace import RADIAL_SWAP
    monkeypatch.setattr(_registry, "_SWAPS", [s for s in _registry._SWAPS if s is not RADIAL_SWAP])
    model = build_model(**ARCH)
    with pytest.warns(UnsupportedBlockWarning, match="not fused.*radial MLP was not swapped"):
        batmobile_nn.patch(model, fuse_interactions=True)
    assert _fused_count(model) == 0 and is_patched(model)


def _frozen(model):
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # as mace's calculator does
    return model


def _paired_count(model):
    return sum(_fusion.paired(block) for block in model.interactions if not isinstance(block, FusedInteraction))


def _saved_shapes(model, batch):
    """The shapes of the tensors autograd keeps for the backward of one energy-and-forces call."""
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        model(batch.clone().to_dict(), compute_force=True, training=False)
    return shapes


def test_auto_pairs_all_but_the_last_block_while_frozen(model, stock_model, batch):
    """The default: the blocks stay mace's; the first one's radial MLP defers its last layer to its convolution
    while the parameters are frozen, so that autograd keeps its hidden features, not its weights; trainable, it
    computes as unpaired. Both ways equal stock MACE (outputs; a training step's gradients)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedBlockWarning)
        batmobile_nn.patch(model)
    first, last = model.interactions
    assert [type(b).__name__ for b in model.interactions] == [type(b).__name__ for b in stock_model.interactions]
    assert _fusion.paired(first) and not _fusion.paired(last) and _fusion.fused_mode(model) == "auto"
    assert list(model.state_dict()) == list(stock_model.state_dict())
    first_weights = (batch.edge_index.shape[1], first.conv_tp.weight_numel)
    assert not first.conv_tp_weights.last_layer_deferred() and first_weights in _saved_shapes(model, batch)
    expected, got = _training_gradients(stock_model, batch), _training_gradients(model, batch)
    for name in expected:
        scale = max(expected[name].abs().max().item(), 1e-12)
        assert (got[name] - expected[name]).abs().max().item() / scale < 1e-9, name
    frozen_stock, frozen = _frozen(copy.deepcopy(stock_model)), _frozen(model)
    assert first.conv_tp_weights.last_layer_deferred() and not last.conv_tp_weights.last_layer_deferred()
    assert first_weights not in _saved_shapes(frozen, batch)
    assert first_weights in _saved_shapes(batmobile_nn.patch(copy.deepcopy(frozen), fuse_interactions=False), batch)
    assert_outputs_close(evaluate(frozen, batch), evaluate(frozen_stock, batch), 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_auto_equals_stock_with_a_cutoff_and_three_blocks(dtype):
    """Frozen: with mace's cutoff passed to the blocks (``apply_cutoff=False``: the paired MLP's hidden features
    are scaled by it in mace's forward) and three blocks (two paired), in float64 and float32, energies, forces and
    stress equal stock MACE."""
    stock = _frozen(build_model(**ARCH, num_interactions=3, apply_cutoff=False, dtype=dtype))
    batch = make_batch([bulk_structure(), molecule_structure()], dtype=dtype)
    patched = batmobile_nn.patch(copy.deepcopy(stock))
    assert [_fusion.paired(block) for block in patched.interactions] == [True, True, False]
    assert all(block.conv_tp_weights.last_layer_deferred() for block in patched.interactions[:2])
    saw_cutoff = []
    hook = patched.interactions[0].register_forward_pre_hook(
        lambda module, args, kwargs: saw_cutoff.append(kwargs.get("cutoff") is not None), with_kwargs=True)
    got = evaluate(patched, batch)
    hook.remove()
    assert saw_cutoff == [True]
    assert_outputs_close(got, evaluate(stock, batch), 1e-10 if dtype == torch.float64 else 2e-5)


def test_auto_pairing_survives_copies_not_a_module_copied_alone(model, batch):
    """deepcopy and pickle keep each copy's pair (its own modules); a convolution or MLP copied alone (as
    nn.DataParallel's replicas are made) points at the original partner, which does not point back: unpaired."""
    frozen = _frozen(batmobile_nn.patch(model))
    buffer = io.BytesIO()
    torch.save(frozen, buffer)
    buffer.seek(0)
    expected = evaluate(frozen, batch)
    for other in (copy.deepcopy(frozen), torch.load(buffer, weights_only=False)):
        first = other.interactions[0]
        assert _fusion.paired(first) and first.conv_tp_weights.last_layer_deferred()
        assert_outputs_close(evaluate(other, batch), expected, 1e-12)
    first = frozen.interactions[0]
    replica = first._replicate_for_data_parallel()  # what nn.DataParallel's replicate makes of each module
    for name in ("conv_tp", "conv_tp_weights"):
        replica._modules[name] = getattr(first, name)._replicate_for_data_parallel()
    assert not _fusion.paired(replica) and not replica.conv_tp_weights.last_layer_deferred()
    assert _fusion.paired(first) and first.conv_tp_weights.last_layer_deferred()


def test_auto_keeps_mace_tools_and_torchscript_working(batch):
    """A default-patched model: mace's extract_model (its conversions read the block classes) gives stock MACE;
    e3nn's TorchScript compile of the frozen model runs (unpaired), equal to eager, and so does the compile of
    mace's LAMMPS wrapper around it."""
    from e3nn.util import jit
    from mace.calculators.lammps_mace import LAMMPS_MACE
    from mace.tools.scripts_utils import extract_model
    stock_model = build_model(**ARCH, scale_shift=True)  # what mace's extract_config_mace_model reads
    frozen = _frozen(batmobile_nn.patch(copy.deepcopy(stock_model)))
    assert _paired_count(frozen) == 1
    with default_dtype(torch.float64):  # extract_model builds a new model in the default dtype
        extracted = extract_model(frozen, map_location="cpu")
    assert not is_patched(extracted)
    assert_outputs_close(evaluate(extracted, batch), evaluate(stock_model, batch), 1e-12)
    with default_dtype(torch.float64):  # e3nn's compile traces its code in the default dtype
        scripted = jit.compile(copy.deepcopy(frozen))
        jit.compile(LAMMPS_MACE(copy.deepcopy(frozen)))
    assert_outputs_close(evaluate(scripted, batch), evaluate(frozen, batch), 1e-10)


def test_fusion_modes_switch_and_come_back(model, stock_model, batch):
    """patch asks for a fusion and gets it, also on a patched model; ``unpatched`` restores the one it had; a swap
    registered since reaches fused blocks; a mode that is none of "auto", True, False is refused."""
    from batmobile_nn.patches.mace import LINEAR_SWAPS
    from batmobile_nn.patches import register_swap, unregister_swap
    batmobile_nn.patch(model)
    assert _paired_count(model) == 1 and _fused_count(model) == 0
    batmobile_nn.patch(model, fuse_interactions=True)
    assert _fused_count(model) == 2 and _fusion.fused_mode(model) is True
    swap = register_swap(LINEAR_SWAPS[0])  # linear_up
    try:
        batmobile_nn.patch(model, fuse_interactions=True)
        assert [type(block.linear_up).__module__ for block in model.interactions] == ["batmobile_nn.o3._linear"] * 2
        batmobile_nn.unpatch(model)
    finally:
        unregister_swap(swap)
    assert not is_patched(model)
    batmobile_nn.patch(model, fuse_interactions=False)
    assert _fused_count(model) == _paired_count(model) == 0 and is_patched(model)
    batmobile_nn.patch(model, fuse_interactions="auto")
    with unpatched(model):
        assert _paired_count(model) == 0 and not is_patched(model)
    assert _paired_count(model) == 1 and _fusion.fused_mode(model) == "auto"
    assert_outputs_close(evaluate(_frozen(model), batch), evaluate(_frozen(copy.deepcopy(stock_model)), batch), 1e-10)
    for mode in ("all", 1, None):
        with pytest.raises(ValueError, match="fuse_interactions must be 'auto', True or False"):
            batmobile_nn.patch(model, fuse_interactions=mode)


def test_lammps_calls_run_the_replaced_block(model, batch):
    """LAMMPS' ghost-atom exchange (``lammps_class``) in a FusedInteraction goes to the mace block it replaced (the
    same submodules, and the plain attributes set since); a FusedInteraction built on its own refuses it."""
    batmobile_nn.patch(model, fuse_interactions=True)
    fused = model.interactions[0]
    fused.avg_num_neighbors = 3.0  # set while fused, as mace's fine-tuning does
    data = batch.to_dict()
    n_nodes, n_edges = data["positions"].shape[0], data["edge_index"].shape[1]
    inputs = dict(node_attrs=data["node_attrs"], node_feats=model.node_embedding(data["node_attrs"]),
                  edge_attrs=torch.randn(n_edges, fused.conv_tp.irreps_in2.dim, dtype=torch.float64),
                  edge_feats=torch.randn(n_edges, fused.conv_tp_weights.hs[0], dtype=torch.float64),
                  edge_index=data["edge_index"])
    lammps = dict(lammps_class=object(), lammps_natoms=(n_nodes - 2, 2), first_layer=True)  # no exchange in
    got = fused(**inputs, **lammps)[0]  # the first layer; the ghosts' rows are cut
    assert got.shape[0] == n_nodes - 2
    torch.testing.assert_close(got, fused(**inputs)[0][:n_nodes - 2], rtol=1e-12, atol=1e-12)
    alone = FusedInteraction.from_mace(copy.deepcopy(fused._batmobile_block))
    with pytest.raises(NotImplementedError, match="LAMMPS"):
        alone(**inputs, **lammps)


@pytest.mark.cuda
def test_fused_model_equals_stock_on_the_gpu(stock_model):
    """On the GPU (the convolution's CUDA kernels behind ops.conv_radial): energies, forces, stress, and a training
    step's gradients against stock MACE on the GPU, float64."""
    stock = copy.deepcopy(stock_model).to("cuda")
    batch = make_batch([bulk_structure(), molecule_structure()]).to("cuda")
    model = batmobile_nn.patch(copy.deepcopy(stock), fuse_interactions=True)
    assert _fused_count(model) == 2
    assert_outputs_close(evaluate(model, batch), evaluate(stock, batch), 1e-10)
    from batmobile_nn import _backend
    assert "conv_radial" in _backend.KERNELS.get("cuda", {}), "the CUDA kernels did not load (reference path)"
    expected, got = _training_gradients(stock, batch), _training_gradients(model, batch)
    for name in expected:
        scale = max(expected[name].abs().max().item(), 1e-12)
        assert (got[name] - expected[name]).abs().max().item() / scale < 1e-9, name


@pytest.mark.cuda
def test_auto_fusion_lowers_the_frozen_peak_on_the_gpu():
    """On the GPU, float64, frozen parameters (MD): the default fusion equals stock MACE, and one energy-and-forces
    step's peak is lower than unfused by at least half of the first block's weights less its hidden features."""
    stock = _frozen(build_model(hidden_irreps="32x0e+32x1o", max_ell=3, correlation=2)).to("cuda")
    batch = make_batch([bulk_structure(seed) for seed in range(16)]).to("cuda")
    n_edges = batch.edge_index.shape[1]
    peaks = {}
    for mode in (False, "auto"):
        model = batmobile_nn.patch(copy.deepcopy(stock), fuse_interactions=mode)
        assert _paired_count(model) == (1 if mode else 0)
        assert_outputs_close(evaluate(model, batch), evaluate(stock, batch), 1e-10)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        evaluate(model, batch)
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - base
    first = model.interactions[0]
    assert first.conv_tp_weights.last_layer_deferred()
    from batmobile_nn import _backend
    assert "conv_radial" in _backend.KERNELS.get("cuda", {}), "the CUDA kernels did not load (reference path)"
    saved = n_edges * (first.conv_tp.weight_numel - first.conv_tp_weights.hs[-2]) * 8  # bytes
    assert peaks[False] - peaks["auto"] > saved / 2, (peaks, saved)

