"""``batmobile_nn.patch`` / ``unpatch`` on mace-torch models: state_dicts, stock restoration, saving, warnings."""

import copy
import io
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("mace")

import batmobile_nn  # noqa: E402
from batmobile_nn.patches import (Swap, UnsupportedBlockWarning, is_patched, register_swap,  # noqa: E402
                                  registered_swaps, unregister_swap)
from batmobile_nn import o3 as batmobile_o3  # noqa: E402
from batmobile_nn.nn import ElementLinear, FullyConnectedNet, SymmetricContraction  # noqa: E402
from e3nn import o3 as e3nn_o3  # noqa: E402
from batmobile_nn.patches.mace import unpatched  # noqa: E402
from mace_cases import (assert_outputs_close, build_model, bulk_structure, evaluate, make_batch,  # noqa: E402
                        molecule_structure)

SAME = 1e-12  # outputs of the same math on the same tensors


@pytest.fixture(scope="module")
def stock_model():
    return build_model(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=1, first="RealAgnosticInteractionBlock")


@pytest.fixture(scope="module")
def batch():
    return make_batch([bulk_structure(), molecule_structure()])


@pytest.fixture(scope="module")
def stock_outputs(stock_model, batch):
    return evaluate(stock_model, batch)


@pytest.fixture
def model(stock_model):
    return copy.deepcopy(stock_model)


def _snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def _assert_state_dict_identical(model, expected):
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].device == value.device, key
        assert torch.equal(state[key], value), key


def _pickled(model) -> bytes:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def _linears(model):
    """The model's linear submodules (e3nn's or ours) by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (e3nn_o3.Linear, batmobile_o3.Linear))}


def test_patch_keeps_the_state_dict_and_unpatch_restores_the_stock_modules(model, batch, stock_outputs):
    before = _snapshot(model)
    stock_convs = [block.conv_tp for block in model.interactions]
    stock_products = [block.symmetric_contractions for block in model.products]
    stock_skips = [block.skip_tp for block in model.interactions]
    stock_attributes = [sorted(vars(block)) for block in model.interactions]
    stock_linears = _linears(model)
    assert len(stock_linears) >= 8 and all(isinstance(m, e3nn_o3.Linear) for m in stock_linears.values())
    stock_harmonics = model.spherical_harmonics
    stock_radials = [block.conv_tp_weights for block in model.interactions]

    assert batmobile_nn.patch(model) is model
    assert type(model.spherical_harmonics) is batmobile_o3.SphericalHarmonics
    assert [type(block.conv_tp_weights) for block in model.interactions] == [FullyConnectedNet] * 2
    assert [type(block.conv_tp).__name__ for block in model.interactions] == ["EquivariantConv"] * 2
    assert [type(block.symmetric_contractions) for block in model.products] == [SymmetricContraction] * 2
    assert [type(block.skip_tp) for block in model.interactions] == [ElementLinear] * 2
    _assert_state_dict_identical(model, before)
    assert_outputs_close(evaluate(model, batch), stock_outputs, 1e-10)

    assert batmobile_nn.unpatch(model) is model
    assert [block.conv_tp for block in model.interactions] == stock_convs  # the very same e3nn modules
    assert [block.symmetric_contractions for block in model.products] == stock_products
    assert [block.skip_tp for block in model.interactions] == stock_skips
    assert _linears(model) == stock_linears  # the linears are opt-in: stock by default
    assert model.spherical_harmonics is stock_harmonics
    assert [block.conv_tp_weights for block in model.interactions] == stock_radials
    assert [sorted(vars(block)) for block in model.interactions] == stock_attributes  # no conv_fusion left
    assert not is_patched(model)
    _assert_state_dict_identical(model, before)
    assert_outputs_close(evaluate(model, batch), stock_outputs, SAME)


def test_patching_twice_and_unpatching_twice_are_harmless(model, batch, stock_outputs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedBlockWarning)
        batmobile_nn.patch(model)
        convs = [block.conv_tp for block in model.interactions]
        batmobile_nn.patch(model)
    assert [block.conv_tp for block in model.interactions] == convs
    assert_outputs_close(evaluate(model, batch), stock_outputs, 1e-10)
    batmobile_nn.unpatch(batmobile_nn.unpatch(model))
    assert not is_patched(model)
    assert_outputs_close(evaluate(model, batch), stock_outputs, SAME)


def test_state_dicts_load_both_ways(stock_model, batch, stock_outputs):
    other = build_model(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=1, first="RealAgnosticInteractionBlock",
                        seed=7)
    batmobile_nn.patch(other)
    other.load_state_dict(stock_model.state_dict(), strict=True)  # stock -> patched
    assert is_patched(other)
    assert_outputs_close(evaluate(other, batch), stock_outputs, 1e-10)

    fresh_stock = build_model(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=1, first="RealAgnosticInteractionBlock",
                              seed=8)
    fresh_stock.load_state_dict(other.state_dict(), strict=True)  # patched -> stock
    assert_outputs_close(evaluate(fresh_stock, batch), stock_outputs, SAME)


def test_saved_unpatched_model_is_stock_mace(model, batch, stock_outputs):
    batmobile_nn.unpatch(batmobile_nn.patch(model))
    saved = _pickled(model)
    assert b"batmobile" not in saved
    loaded = torch.load(io.BytesIO(saved), weights_only=False)
    assert_outputs_close(evaluate(loaded, batch), stock_outputs, SAME)


def test_unpatched_context_saves_stock_and_repatches(model):
    batmobile_nn.patch(model)
    with unpatched(model):
        saved = _pickled(model)
    assert b"batmobile" not in saved and is_patched(model)


def test_copies_and_pickles_of_a_patched_model_unpatch(model, batch, stock_outputs):
    batmobile_nn.patch(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for clone in (copy.deepcopy(model), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert is_patched(clone)
        assert_outputs_close(evaluate(clone, batch), stock_outputs, 1e-10)
        batmobile_nn.unpatch(clone)
        assert b"batmobile" not in _pickled(clone)
        assert_outputs_close(evaluate(clone, batch), stock_outputs, SAME)


def test_a_conv_fusion_attribute_set_before_patching_comes_back(model):
    block = model.interactions[1]
    block.conv_fusion = "atomic"  # what mace sets when a (disabled) OEQConfig is passed
    batmobile_nn.unpatch(batmobile_nn.patch(model))
    assert block.conv_fusion == "atomic"


def test_unknown_block_class_stays_stock_with_one_warning(batch):
    from mace.modules.blocks import RealAgnosticResidualInteractionBlock

    class MyInteractionBlock(RealAgnosticResidualInteractionBlock):
        def forward(self, *args, **kwargs):  # a forward batmobile_nn has not verified
            return super().forward(*args, **kwargs)

    model = build_model(hidden_irreps="4x0e+4x1o", max_ell=1, correlation=1, interaction_cls=MyInteractionBlock)
    expected = evaluate(model, batch)
    before = _snapshot(model)
    with pytest.warns(UnsupportedBlockWarning) as record:
        batmobile_nn.patch(model)
    messages = [str(w.message) for w in record if issubclass(w.category, UnsupportedBlockWarning)]
    assert len(messages) == 1 and "MyInteractionBlock" in messages[0]
    assert "interactions.0" in messages[0] and "interactions.1" in messages[0]
    assert is_patched(model)  # the product blocks are swapped: they do not depend on the interaction's class
    assert {type(block.conv_tp).__name__ for block in model.interactions} == {"TensorProduct"}
    _assert_state_dict_identical(model, before)
    assert_outputs_close(evaluate(model, batch), expected, SAME)


@pytest.mark.parametrize("kind", ["batmobile", "uvv"])
def test_a_conv_tp_it_cannot_fuse_is_left_alone(model, kind):
    from e3nn import o3

    block = model.interactions[0]
    stock = block.conv_tp
    if kind == "batmobile":  # not an e3nn module
        replacement = batmobile_nn.o3.TensorProduct(stock.irreps_in1, stock.irreps_in2, stock.irreps_out,
                                                    [tuple(i)[:5] for i in stock.instructions], shared_weights=False,
                                                    internal_weights=False)
        expected = "RealAgnosticInteractionBlock.*not an e3nn o3.TensorProduct"
    else:  # an e3nn connection mode EquivariantConv does not have
        replacement = o3.TensorProduct("4x0e", "4x0e", "4x0e", [(0, 0, 0, "uvv", True)], shared_weights=False,
                                       internal_weights=False)
        expected = "RealAgnosticInteractionBlock.*'uvv'"
    block.conv_tp = replacement
    with pytest.warns(UnsupportedBlockWarning, match=expected):
        batmobile_nn.patch(model)
    assert block.conv_tp is replacement and not hasattr(block, "conv_fusion")
    assert type(model.interactions[1].conv_tp).__name__ == "EquivariantConv"  # the other block is patched


def test_registered_swaps_run_on_patch_and_undo_in_reverse(model):
    class MarkSwap(Swap):
        name = "test-mark"

        def applies_to(self, block):
            return hasattr(block, "conv_tp")

        def why_unsupported(self, block):
            return None

        def is_patched(self, block):
            return "test_mark" in vars(block)

        def patch_block(self, block):
            # runs after the conv swap: sees the fused conv
            block.test_mark = type(block.conv_tp).__name__

        def unpatch_block(self, block):
            # runs before the conv swap is undone
            assert type(block.conv_tp).__name__ == "EquivariantConv"
            del block.test_mark

    swap = register_swap(MarkSwap())
    try:
        assert registered_swaps()[-1] is swap
        batmobile_nn.patch(model)
        assert [block.test_mark for block in model.interactions] == ["EquivariantConv"] * 2
        batmobile_nn.unpatch(model)
        assert not any(hasattr(block, "test_mark") for block in model.interactions)
        with pytest.raises(ValueError, match="already registered"):
            register_swap(MarkSwap())
    finally:
        unregister_swap(swap)
    with pytest.raises(ValueError, match="Swap"):
        register_swap(object())


def test_patch_rejects_what_is_not_a_module():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        batmobile_nn.patch({"not": "a model"})


def test_import_batmobile_nn_does_not_import_mace():
    code = "import sys, batmobile_nn; assert callable(batmobile_nn.patch); assert 'mace' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_product_blocks_it_cannot_swap_are_named(model):
    from types import SimpleNamespace

    from batmobile_nn.patches.mace import PRODUCT_SWAP

    block = model.products[0]
    assert PRODUCT_SWAP.why_unsupported(block) is None
    block.cueq_config = SimpleNamespace(enabled=True, optimize_all=False, optimize_symmetric=True)
    assert "cuEquivariance" in PRODUCT_SWAP.why_unsupported(block)
    block.cueq_config = None
    block.forward = lambda *args: None  # an instance forward batmobile_nn has not verified
    assert "forward" in PRODUCT_SWAP.why_unsupported(block)
    del block.forward
    block.symmetric_contractions = torch.nn.Identity()
    assert "Identity" in PRODUCT_SWAP.why_unsupported(block)


def test_patched_model_runs_in_inference_mode(model, batch, stock_outputs):
    """Inference tensors have no version counter: the per-tensor caches pass them by (computing anew)."""
    batmobile_nn.patch(model)
    with torch.inference_mode():
        data = batch.clone().to_dict()  # inference tensors
        assert data["edge_index"].is_inference()
        energy = model(data, compute_force=False)["energy"]
    torch.testing.assert_close(energy, stock_outputs["energy"], rtol=1e-10, atol=1e-10)


def test_patched_model_compiles_with_e3nn_jit(model, batch, stock_outputs):
    """mace deploys models through e3nn's ``jit.compile`` (TorchScript): the swapped modules script too."""
    from e3nn.util import jit

    compiled = jit.compile(batmobile_nn.patch(model))
    assert_outputs_close(evaluate(compiled, batch), stock_outputs, 1e-10)


def test_opt_in_linear_swaps(model, batch, stock_outputs):
    """With ``LINEAR_SWAPS`` registered, every o3.Linear of the blocks (interaction: linear_up, linear; product,
    embedding, readouts) becomes ``batmobile_nn.o3.Linear``; same state_dict, outputs, and unpatch restores."""
    from batmobile_nn.patches.mace import LINEAR_SWAPS

    before = _snapshot(model)
    stock_linears = _linears(model)
    for swap in LINEAR_SWAPS:
        register_swap(swap)
    try:
        batmobile_nn.patch(model)
        assert {name: type(m) for name, m in _linears(model).items()} == dict.fromkeys(stock_linears,
                                                                                      batmobile_o3.Linear)
        _assert_state_dict_identical(model, before)
        assert_outputs_close(evaluate(model, batch), stock_outputs, 1e-10)
        batmobile_nn.unpatch(model)
        assert _linears(model) == stock_linears and not is_patched(model)
        _assert_state_dict_identical(model, before)
    finally:
        for swap in LINEAR_SWAPS:
            unregister_swap(swap)


def test_harmonics_of_user_subclasses_and_radial_mlps_it_cannot_read(model, batch, stock_outputs):
    """A subclass of a mace model defined outside mace gets the harmonics swap too; a radial MLP whose layers lack
    e3nn's attributes (pickled with another e3nn) stays stock with a warning, and the rest is patched."""
    model.__class__ = type("UserMACE", (type(model),), {"__module__": "user_code"})
    del model.interactions[1].conv_tp_weights.layer1.__dict__["var_in"]
    with pytest.warns(UnsupportedBlockWarning, match="conv_tp_weights is not supported"):
        batmobile_nn.patch(model)
    assert type(model.spherical_harmonics) is batmobile_o3.SphericalHarmonics
    assert type(model.interactions[0].conv_tp_weights) is FullyConnectedNet
    assert type(model.interactions[1].conv_tp_weights).__name__ == "FullyConnectedNet"  # e3nn's, stock
    assert type(model.interactions[1].conv_tp_weights) is not FullyConnectedNet
    assert type(model.interactions[1].conv_tp).__name__ == "EquivariantConv"  # the block's other swaps applied
    model.interactions[1].conv_tp_weights.layer1.var_in = 1.0  # back, to compare with the stock outputs
    assert_outputs_close(evaluate(model, batch), stock_outputs, 1e-10)
