"""``batmobile-nn train``: mace-torch's ``mace_run_train`` with ``--enable_batmobile`` (see ``batmobile_nn.training``).

Every argument after ``train`` goes to mace's own parser unchanged (``batmobile-nn train --help`` lists them).
"""

import argparse


def register(subparsers) -> None:
    # prefix_chars="+": our parser takes no options of its own, so all of mace's "--x" arguments (and -h)
    # reach mace_args untouched and are parsed by mace's parser in run().
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune MACE with mace's run_train (every mace_run_train argument) "
        "plus --enable_batmobile=True",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("mace_args", nargs=argparse.REMAINDER, help="mace_run_train arguments")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.run_train import main

    return main(args.mace_args)
