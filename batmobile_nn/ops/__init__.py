"""The ops, registered with ``torch.library`` under ``torch.ops.batmobile``.

Each op validates its inputs, has a fake (meta) implementation for torch.compile, and an
autograd formula whose backward is itself an op, so forces can be trained on (double backward).
"""

from ._checks import set_index_checks
from ._plan import TPPlan, make_plan
from .conv import conv, conv_backward, conv_double_backward
from .conv_radial import conv_radial
from .element_linear import element_linear, element_outer
from .linear import linear, linear_outer
from .spherical_harmonics import (spherical_harmonics, spherical_harmonics_backward,
                                  spherical_harmonics_double_backward)
from .symmetric_contraction import (symmetric_contraction, symmetric_contraction_backward,
                                    symmetric_contraction_double_backward)
from .tensor_product import tensor_product, tensor_product_backward

__all__ = ["TPPlan", "make_plan", "set_index_checks", "spherical_harmonics", "spherical_harmonics_backward",
           "spherical_harmonics_double_backward", "tensor_product", "tensor_product_backward", "conv",
           "conv_backward", "conv_double_backward", "conv_radial", "symmetric_contraction", "symmetric_contraction_backward",
           "symmetric_contraction_double_backward", "element_linear", "element_outer",
           "linear", "linear_outer"]
