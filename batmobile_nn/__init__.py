"""batmobile_nn: fast equivariant interatomic potentials (MACE first), with e3nn-exact results.

Namespaces: ``batmobile_nn.ops`` (``torch.ops.batmobile.*``), ``batmobile_nn.reference`` (the
pure-PyTorch oracle), ``batmobile_nn.o3`` and ``batmobile_nn.nn`` (e3nn-shaped modules).
"""

from ._e3nn_compat import prepare_e3nn_import

prepare_e3nn_import()

from . import nn, o3, ops, reference  # noqa: E402  (importing ops registers torch.ops.batmobile.*)
from ._backend import ReferencePathWarning  # noqa: E402

__version__ = "0.1.0"
__all__ = ["nn", "o3", "ops", "reference", "ReferencePathWarning", "__version__"]
