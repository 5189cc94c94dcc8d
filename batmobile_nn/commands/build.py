"""``batmobile-nn build``: compile the CUDA kernels now (otherwise the first CUDA use does it)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("build", help="compile the CUDA kernels for this GPU into the cache")
    parser.add_argument("--device", default="cuda", help="the GPU whose architecture to build for")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache holds a build")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from .. import _build

    try:
        library = _build.build(torch.device(args.device), verbose=args.verbose, force=args.force)
    except _build.BuildError as exc:
        print(f"batmobile-nn build: {exc}")
        return 1
    print(f"batmobile-nn build: CUDA kernels ready at {library}")
    return 0
