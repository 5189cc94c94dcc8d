"""``batmobile-nn md``: molecular dynamics with a MACE model through ASE (see ``batmobile_nn.md``)."""

import argparse


def register(subparsers) -> None:
    from ..md import DEFAULT_MODEL, DEFAULT_STRUCTURE

    parser = subparsers.add_parser(
        "md",
        help="run molecular dynamics with a MACE model (default: the embedded Cu/Ag/Au/Al demo model)",
        description="Molecular dynamics through ASE with batmobile_nn's MACE calculator: Langevin NVT "
        "(default) or NVE. Writes a trajectory and a log, and ends with the speed in steps/s and ns/day.",
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a MACE .model file (default: embedded demo model)")
    parser.add_argument("--structure", default=str(DEFAULT_STRUCTURE),
                        help="any file ASE reads (default: embedded Cu-Au slab); the last frame is used")
    parser.add_argument("--steps", type=int, default=200, help="number of MD steps")
    parser.add_argument("--timestep", type=float, default=2.0, help="time step in fs")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: Langevin target, and initial Maxwell-Boltzmann velocities")
    parser.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt",
                        help="nvt: Langevin thermostat; nve: velocity Verlet")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--backend", choices=["batmobile", "e3nn"], default="batmobile",
                        help="batmobile: patched model (our ops); e3nn: stock MACE, for comparison")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="replay each step from a CUDA graph (default: on with the batmobile backend on a GPU)")
    parser.add_argument("--output", default="md_output", help="directory for md.traj and md.log")
    parser.add_argument("--log_interval", type=int, default=10, help="steps between trajectory frames/log lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and the thermostat")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on the CPU, where a few hundred atoms gain little from "
                        "more and a shared CPU loses a lot; torch's default on a GPU)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..md import run_md

    run_md(
        model=args.model, structure=args.structure, steps=args.steps, timestep_fs=args.timestep,
        temperature_K=args.temperature, ensemble=args.ensemble, friction_per_fs=args.friction,
        device=args.device, dtype=args.dtype, backend=args.backend, output=args.output,
        log_interval=args.log_interval, seed=args.seed, threads=args.threads, cuda_graphs=args.cuda_graphs,
    )
    return 0
