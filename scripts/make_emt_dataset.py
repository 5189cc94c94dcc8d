"""Writes the EMT-labelled Cu/Ag/Au/Al data sets of the demo model (``batmobile_nn.training.emt_data``).

Usage (from the repository root)::

    python scripts/make_emt_dataset.py [--out results/emt_data] [--seed 0]

Files: ``train.xyz`` (isolated atoms + configurations), ``valid.xyz``, ``test.xyz`` (``configs/emt_from_scratch.yaml``),
``finetune_train.xyz``, ``finetune_valid.xyz`` (``configs/emt_finetune.yaml``). Labels: ``REF_energy`` (eV),
``REF_forces`` (eV/Å), ``REF_stress`` (eV/Å³, periodic cells).
"""

import argparse
import collections
import time

import ase.io

from batmobile_nn.training.emt_data import write_emt_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/emt_data")
    parser.add_argument("--n_train", type=int, default=500)
    parser.add_argument("--n_valid", type=int, default=50)
    parser.add_argument("--n_test", type=int, default=100)
    parser.add_argument("--n_finetune", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    paths = write_emt_datasets(args.out, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                               n_finetune=args.n_finetune, seed=args.seed)
    for name, path in paths.items():
        frames = ase.io.read(path, ":")
        kinds = collections.Counter(a.info.get("config_type", "?") for a in frames)
        print(f"{path}: {len(frames)} configs, {sum(len(a) for a in frames)} atoms, {dict(sorted(kinds.items()))}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
