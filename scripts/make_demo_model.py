"""Reproduces the demo model embedded in ``batmobile_nn/data/`` (the default of ``batmobile-nn md``).

1. EMT-labelled Cu/Ag/Au/Al data (``batmobile_nn.training.emt_data``) -> ``results/emt_data/``;
2. ``batmobile-nn train --config configs/emt_from_scratch.yaml`` (``enable_batmobile: true``; CPU, float32);
3. copies the saved (stock MACE) model to ``batmobile_nn/data/mace_emt_metals.model``, writes the embedded
   structure ``batmobile_nn/data/cuau_slab.xyz`` and ``batmobile_nn/data/README.md`` (data, config, command,
   mace's error tables).

Usage, from the repository root (about 20 minutes on 2 CPU cores)::

    python scripts/make_demo_model.py [--reuse_data]
"""

import argparse
import collections
import os
import platform
import re
import shutil
import time
from pathlib import Path

MAX_MODEL_BYTES = 5 * 1024 * 1024


def error_tables(log_text: str) -> dict:
    """mace's final error tables from its log: ``{"TRAIN and VALID": table, "TEST": table}``."""
    tables = {}
    for match in re.finditer(r"Error-table on (TRAIN and VALID|TEST):\n((?:[+|].*\n?)+)", log_text):
        tables[match.group(1)] = match.group(2).rstrip()
    return tables


def describe_data(paths: dict) -> str:
    import ase.io

    rows = ["| file | configs | atoms | config types |", "|---|---|---|---|"]
    for name, path in paths.items():
        frames = ase.io.read(path, ":")
        kinds = collections.Counter(a.info.get("config_type", "?") for a in frames)
        kinds_text = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        rows.append(f"| `{Path(path).name}` | {len(frames)} | {sum(len(a) for a in frames)} | {kinds_text} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="reproduce batmobile_nn's embedded demo model")
    parser.add_argument("--config", default="configs/emt_from_scratch.yaml")
    parser.add_argument("--data", default="results/emt_data")
    parser.add_argument("--reuse_data", action="store_true", help="keep existing data files in --data")
    parser.add_argument("--out", default="batmobile_nn/data")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine, more threads spin and slow down)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import batmobile_nn
    from batmobile_nn.cli import main as cli_main
    from batmobile_nn.training.emt_data import cuau_slab, write_emt_datasets
    from batmobile_nn.training.run_train import build_arg_parser

    names = ["train", "valid", "test", "finetune_train", "finetune_valid"]
    paths = {name: f"{args.data}/{name}.xyz" for name in names}
    start = time.perf_counter()
    data_text = "data reused (--reuse_data; scripts/make_emt_dataset.py run before)"
    if not (args.reuse_data and all(Path(p).exists() for p in paths.values())):
        print(f"generating EMT data in {args.data} ...", flush=True)
        paths = write_emt_datasets(args.data)
        data_text = f"data {(time.perf_counter() - start) / 60:.1f} min"

    config = build_arg_parser().parse_args(["--config", args.config])
    print(f"training: batmobile-nn train --config {args.config}", flush=True)
    start = time.perf_counter()
    assert cli_main(["train", "--config", args.config]) == 0
    train_seconds = time.perf_counter() - start

    work_dir = Path(config.work_dir)
    trained = work_dir / f"{config.name}.model"
    data = Path(args.out)
    model_path, structure_path = data / "mace_emt_metals.model", data / "cuau_slab.xyz"
    if trained.stat().st_size > MAX_MODEL_BYTES:
        raise RuntimeError(f"{trained} is {trained.stat().st_size} bytes, more than {MAX_MODEL_BYTES}")
    if b"batmobile_nn" in trained.read_bytes():
        raise RuntimeError(f"{trained} refers to batmobile_nn: it must be a stock MACE model")
    shutil.copyfile(trained, model_path)
    slab = cuau_slab()
    slab.write(structure_path, format="extxyz")

    model = torch.load(model_path, map_location="cpu", weights_only=False)
    n_params = sum(p.numel() for p in model.parameters())
    log = (work_dir / "logs" / f"{config.name}_run-{config.seed}.log").read_text()
    tables = error_tables(log)
    readme = TEMPLATE.format(
        model=model_path.name, size_kb=model_path.stat().st_size / 1024, n_params=n_params,
        model_class=type(model).__name__, structure=structure_path.name,
        structure_formula=slab.get_chemical_formula(), n_atoms=len(slab),
        config_path=args.config, config_text=Path(args.config).read_text().strip(),
        data_table=describe_data(paths), data_text=data_text, train_minutes=train_seconds / 60,
        cpus=os.cpu_count(), threads=args.threads, machine=platform.processor() or platform.machine(),
        load=" / ".join(f"{x:.1f}" for x in os.getloadavg()),
        versions=f"batmobile_nn {batmobile_nn.__version__}, torch {torch.__version__}, "
                 f"mace-torch {__import__('mace').__version__}, ase {__import__('ase').__version__}",
        train_valid_table=tables.get("TRAIN and VALID", "(not found in the log)"),
        test_table=tables.get("TEST", "(not found in the log)"),
    )
    (data / "README.md").write_text(readme)
    print(f"wrote {model_path} ({model_path.stat().st_size / 1024:.0f} KiB), {structure_path}, {data / 'README.md'}")
    print(f"{data_text}, training {train_seconds / 60:.1f} min")


TEMPLATE = """# Embedded demo model and structure

Written by `scripts/make_demo_model.py` (do not edit by hand: rerun the script).

- `{model}`: a small MACE ({model_class}, {n_params} parameters, {size_kb:.0f} KiB, float32) trained with
  `batmobile-nn train --config {config_path}` (that is, mace-torch's own `run_train` with `--enable_batmobile=True`:
  the model was patched by batmobile_nn while training; the saved file is a stock MACE model that loads with
  plain mace-torch, without batmobile_nn). Elements: Al, Cu, Ag, Au. Default model of `batmobile-nn md`.
- `{structure}`: the default structure of `batmobile-nn md`: a random Cu-Au alloy fcc(111) slab,
  {structure_formula} ({n_atoms} atoms, 5x5 surface cell, 5 layers, about 25 % Au, 10 Å vacuum on each side,
  periodic in x and y only), from `batmobile_nn.training.emt_data.cuau_slab()`.

The labels come from ASE's EMT calculator (effective medium theory), a cheap analytic model of these fcc
metals: this model reproduces EMT, not DFT or experiment. It is a demonstration and test model, not a
potential for production science.

## Data

`python scripts/make_emt_dataset.py` (`batmobile_nn/training/emt_data.py`, seed 0) writes, into `results/emt_data/`:

{data_table}

Configurations: fcc bulk cells of Cu, Ag, Au and Al (32 atoms), random alloys of 2 to 4 of them (Vegard's-law
lattice constants), bulk cells with a vacancy, (111) and (100) slabs (16 atoms, 12 Å of vacuum along the periodic z)
and Cu-Au (111) slabs (36 atoms); each strained (isotropic ±4 % plus a random shear), then either sampled by short
EMT Langevin MD at 300, 800 or 1300 K (4 fs steps, a frame every 5 steps) or rattled (Gaussian, 0.02–0.15 Å).
Labels: `REF_energy` (eV), `REF_forces` (eV/Å), `REF_stress` (eV/Å³); the 4 isolated atoms in `train.xyz`
(`config_type=IsolatedAtom`) give the E0s. The fine-tuning files (Cu-Au slabs with an adatom) are used by
`configs/emt_finetune.yaml`, not by this model.

## Training

```
python scripts/make_demo_model.py     # = make_emt_dataset.py + the command below + copying the files here
batmobile-nn train --config {config_path}
```

`{config_path}`:

```yaml
{config_text}
```

Time on this run: {data_text}, training {train_minutes:.1f} min, with {threads} torch thread(s)
on a {cpus}-core CPU ({machine}), load average at the end {load} (the machine was shared with other jobs). {versions}.

## Errors (mace's evaluation at the end of training; RMSE, energies per atom)

Train and validation:

```
{train_valid_table}
```

Test (`test.xyz`, per config type):

```
{test_table}
```
"""


if __name__ == "__main__":
    main()
