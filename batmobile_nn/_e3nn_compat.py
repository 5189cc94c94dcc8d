"""Make e3nn importable under the torch versions we support.

e3nn 0.4.4 (the version mace-torch 0.3.16 pins) loads its constants with ``torch.load`` and no
``weights_only`` argument, which torch >= 2.6 refuses. mace sets the same variable on import;
we set it only when that old e3nn is the one installed and nothing has imported it yet.
"""

import os
import sys
from importlib import metadata


def prepare_e3nn_import() -> None:
    if "e3nn" in sys.modules:
        return
    try:
        version = metadata.version("e3nn")
    except metadata.PackageNotFoundError:
        return
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor < (0, 5):
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
