"""batmobile_nn: fast equivariant interatomic potentials (MACE first), with e3nn-exact results.

Namespaces: ``batmobile_nn.ops`` (``torch.ops.batmobile.*``), ``batmobile_nn.reference`` (the
pure-PyTorch oracle), ``batmobile_nn.o3`` and ``batmobile_nn.nn`` (e3nn-shaped modules);
``batmobile_nn.patch(model)`` / ``batmobile_nn.unpatch(model)`` for mace-torch models (mace is
imported on the first call, not by ``import batmobile_nn``).
"""

from ._e3nn_compat import prepare_e3nn_import

prepare_e3nn_import()

from . import nn, o3, ops, reference  # noqa: E402  (importing ops registers torch.ops.batmobile.*)
from ._backend import ReferencePathWarning  # noqa: E402
from .patches import patch, unpatch  # noqa: E402  (lazy: imports mace on call)
from . import autograd, seeds  # noqa: E402
# The seed APIs: Batmobile's functions and OpenEquivariance's classes (batmobile_nn.seeds).
from .seeds import (TensorProduct, TensorProductConv, TPProblem, fused_sh_tp_simple,  # noqa: E402
                    get_tp_num_paths, get_tp_path_info, spherical_harmonics, spherical_harmonics_backward,
                    tensor_product, tensor_product_simple)

__version__ = "0.1.0"
__all__ = ["nn", "o3", "ops", "reference", "patch", "unpatch", "ReferencePathWarning", "__version__",
           "autograd", "seeds", *seeds.__all__]
