"""mace-torch's own training script (``mace.cli.run_train``, mace-torch 0.3.16) with ``--enable_batmobile``.

Every ``mace_run_train`` argument is accepted unchanged (command line or ``--config file.yaml``), plus
``--enable_batmobile=True`` (``enable_batmobile: true`` in the YAML). With the flag, two names inside
``mace.cli.run_train`` are replaced for the duration of the run (and restored afterwards), at the points where
mace converts a model to and from cuEquivariance for ``--enable_cueq``:

* ``configure_model`` (which builds the model from scratch or from ``--foundation_model``) returns the model
  patched by :func:`batmobile_nn.patch`, so training and the final evaluation use batmobile_nn's ops, with
  ``fuse_interactions=False``: the default fusion acts only where the radial MLPs' last layers are frozen, which
  they are not while training (except under mace's ``--freeze`` of the interactions), and ``True`` would change
  the block classes that run_train reads into the ``config.yaml`` it saves with the compiled model
  (``extract_config_mace_model``);
* ``deepcopy``, which run_train applies to the model right before every ``torch.save`` / ``jit.compile`` of a
  ``.model`` file, copies the model while it is unpatched (``batmobile_nn.patches.mace.unpatched``) and
  returns that stock e3nn copy, so the saved models load and run without batmobile_nn.

Checkpoints hold ``state_dict``s, whose keys and tensors patching leaves untouched: they are stock MACE
checkpoints, and ``--restart_latest`` resumes from them with or without the flag.
"""

import contextlib
import logging
from typing import Iterator, List, Optional


def build_arg_parser():
    """mace's ``mace_run_train`` argument parser (``--config`` YAML included) plus ``--enable_batmobile``.

    Returns:
        the parser (a ``configargparse.ArgumentParser`` when configargparse is installed, as with mace).

    >>> args = build_arg_parser().parse_args(["--name", "x", "--enable_batmobile=True"])  # doctest: +SKIP
    >>> args.enable_batmobile  # doctest: +SKIP
    True
    """
    from mace.tools.arg_parser import build_default_arg_parser, str2bool

    parser = build_default_arg_parser()
    parser.prog = "batmobile-nn train"
    parser.add_argument(
        "--enable_batmobile",
        help="train with the model patched by batmobile_nn (saved models and checkpoints stay stock MACE)",
        type=str2bool,
        default=False,
    )
    return parser


@contextlib.contextmanager
def batmobile_training_hooks() -> Iterator[None]:
    """While active, ``mace.cli.run_train.run`` trains a patched model and saves stock (unpatched) copies.

    >>> with batmobile_training_hooks():  # doctest: +SKIP
    ...     mace.cli.run_train.run(args)
    """
    import torch
    from mace.cli import run_train as mace_run_train

    from ..patches import is_patched, patch
    from ..patches.mace import unpatched

    configure_model = mace_run_train.configure_model
    deepcopy = mace_run_train.deepcopy

    def configure_patched_model(*args, **kwargs):
        model, output_args = configure_model(*args, **kwargs)
        logging.info("batmobile_nn: patching the model's interaction blocks for training")
        return patch(model, fuse_interactions=False), output_args

    def deepcopy_unpatched(obj, memo=None):
        # run_train copies the model only to save or compile it: copy it while it is stock (unpatched),
        # rather than unpatching a copy, so the copy never holds batmobile_nn state
        if isinstance(obj, torch.nn.Module) and is_patched(obj):
            with unpatched(obj):
                return deepcopy(obj, memo)
        return deepcopy(obj, memo)

    mace_run_train.configure_model = configure_patched_model
    mace_run_train.deepcopy = deepcopy_unpatched
    try:
        yield
    finally:
        mace_run_train.configure_model = configure_model
        mace_run_train.deepcopy = deepcopy


@contextlib.contextmanager
def restored_global_state() -> Iterator[None]:
    """Restores what ``mace.cli.run_train.run`` changes process-wide: torch's default dtype and the root
    logger's level, handlers (closing the log files it opened) and filters, so that it can run in-process."""
    import torch

    root = logging.getLogger()
    dtype, level = torch.get_default_dtype(), root.level
    handlers, filters = list(root.handlers), list(root.filters)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers, root.filters = handlers, filters
        root.setLevel(level)
        torch.set_default_dtype(dtype)


def main(argv: Optional[List[str]] = None) -> int:
    """Parses ``argv`` like ``mace_run_train`` (plus ``--enable_batmobile``) and trains.

    Args:
        argv: the arguments, e.g. ``["--config", "configs/emt_from_scratch.yaml"]``; ``None``: ``sys.argv[1:]``.

    Returns:
        0 (mace raises on failure).

    >>> main(["--name", "demo", "--train_file", "train.xyz", "--enable_batmobile=True"])  # doctest: +SKIP
    0
    """
    from mace.cli.run_train import run

    args = build_arg_parser().parse_args(argv)
    enable_batmobile = args.enable_batmobile
    del args.enable_batmobile  # mace's run() sees exactly the namespace mace_run_train would give it
    if enable_batmobile and (args.enable_cueq or args.only_cueq or args.enable_oeq):
        raise ValueError("--enable_batmobile cannot be combined with --enable_cueq, --only_cueq or --enable_oeq")
    with restored_global_state():
        if enable_batmobile:
            with batmobile_training_hooks():
                run(args)
        else:
            run(args)
    return 0
