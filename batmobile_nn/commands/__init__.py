"""Subcommands of ``batmobile-nn``: each module exposes ``register(subparsers)``.

A subcommand sets ``func`` (called with the parsed arguments, returns an exit code) on its parser.
"""

COMMANDS = ["demo", "train", "md", "build", "bench"]  # module names in this package, in the order ``--help`` lists them
