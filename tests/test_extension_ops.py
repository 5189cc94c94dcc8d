"""``batmobile_nn._extension``: the extension's ops called at their C++ entry point, looked up once per name."""

import pytest
import torch

from batmobile_nn import _extension

_library = torch.library.Library("batmobile_ext_test", "DEF")
_library.define("scale(Tensor x, int[] factors, str mode) -> Tensor")
_library.impl("scale", lambda x, factors, mode: x * sum(factors) * (2 if mode == "double" else 1), "CPU")


def test_calls_the_op_and_remembers_it():
    ops = _extension.Ops("batmobile_ext_test")
    x = torch.arange(3.0)
    assert torch.equal(ops.scale(x, [1, 2], "double"), x * 6)
    assert "scale" in vars(ops)  # looked up once
    assert ops.scale is vars(ops)["scale"]
    assert ops.scale is torch.ops.batmobile_ext_test.scale.default._op  # the entry point, not the packet
    # the same function as the op packet's default overload: the dispatcher's entry, not a copy of the op
    assert torch.equal(ops.scale(x, [4], "single"), torch.ops.batmobile_ext_test.scale(x, [4], "single"))


def test_an_op_not_registered_is_an_attribute_error():
    ops = _extension.Ops("batmobile_ext_test")
    with pytest.raises(AttributeError):
        ops.not_an_op
    assert "not_an_op" not in vars(ops)


def test_the_package_uses_it_for_the_extension():
    from batmobile_nn import _cuda

    assert _cuda._ops() is _extension.ops and _extension.ops._namespace == "batmobile_cuda"


def test_copies_and_private_names():
    import copy

    ops = _extension.Ops("batmobile_ext_test")
    assert copy.copy(ops)._namespace == "batmobile_ext_test"
    with pytest.raises(AttributeError):
        ops._not_an_op

