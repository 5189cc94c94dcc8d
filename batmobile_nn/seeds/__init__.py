"""The public APIs of the two systems we learn from, as thin layers over our ops.

* ``batmobile``: Batmobile's functions (``spherical_harmonics(edge_vectors, L_max)``, ``tensor_product``, ...),
  with its ``[n, c, 16]`` feature layout; the ``torch.autograd.Function`` wrappers are in
  ``batmobile_nn.autograd``.
* ``openequivariance``: OpenEquivariance's ``TPProblem``, ``TensorProduct`` and ``TensorProductConv``,
  with e3nn's weight layout.

All of them are re-exported at the top level (``batmobile_nn.tensor_product``, ``batmobile_nn.TPProblem``, ...).
Mind the names shared with the e3nn-shaped API: ``batmobile_nn.spherical_harmonics(edge_vectors, L_max)`` is
Batmobile's, ``batmobile_nn.o3.spherical_harmonics(l, x, normalize)`` e3nn's; ``batmobile_nn.TensorProduct`` is
OpenEquivariance's, ``batmobile_nn.o3.TensorProduct`` e3nn's; ``batmobile_nn.tensor_product`` is Batmobile's,
``batmobile_nn.ops.tensor_product`` the op.
"""

from .batmobile import (fused_sh_tp_simple, get_tp_num_paths, get_tp_path_info, spherical_harmonics,
                        spherical_harmonics_backward, tensor_product, tensor_product_simple)
from .openequivariance import TensorProduct, TensorProductConv, TPProblem

__all__ = ["spherical_harmonics", "spherical_harmonics_backward", "tensor_product_simple", "tensor_product",
           "get_tp_num_paths", "get_tp_path_info", "fused_sh_tp_simple", "TPProblem", "TensorProduct",
           "TensorProductConv"]
