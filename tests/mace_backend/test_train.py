"""``batmobile-nn train``: mace's run_train with ``--enable_batmobile`` (patched while training, stock when saved).

One tiny float64 training with the flag (module fixture) is checked against stock ``mace.cli.run_train`` and
against our command without the flag (same losses to 1e-8), then resumed from its checkpoint.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mace")

import ase.io  # noqa: E402
import torch  # noqa: E402

import batmobile_nn  # noqa: E402
import batmobile_nn.patches  # noqa: E402
from batmobile_nn.cli import main  # noqa: E402
from batmobile_nn.training.emt_data import make_emt_dataset  # noqa: E402
from batmobile_nn.training.run_train import build_arg_parser, restored_global_state  # noqa: E402

SEED = 3
REPO = Path(__file__).resolve().parents[2]


def tiny_mace_args(data: Path, work_dir: Path, name: str = "tiny", epochs: int = 2):
    """A 2-interaction MACE (4x0e+4x1o, max_ell 2, correlation 2, radial MLP [8, 8]: its first block's 12 weights
    an edge above the MLP's width, where patch's default would fuse it) on 8 four-atom cells, float64."""
    return ["--name", name, "--work_dir", str(work_dir), "--seed", str(SEED),
            "--train_file", str(data / "train.xyz"), "--valid_file", str(data / "valid.xyz"), "--E0s", "average",
            "--model", "MACE", "--hidden_irreps", "4x0e+4x1o", "--r_max", "4.0", "--num_radial_basis", "4",
            "--max_ell", "2", "--correlation", "2", "--num_interactions", "2", "--radial_MLP", "[8, 8]",
            "--batch_size", "2", "--valid_batch_size", "3", "--max_num_epochs", str(epochs), "--forces_weight", "10",
            "--default_dtype", "float64", "--device", "cpu"]


def results(work_dir: Path, name: str = "tiny"):
    """mace's metrics file: one JSON line per optimizer step ("opt") and per evaluation ("eval")."""
    path = work_dir / "results" / f"{name}_run-{SEED}_train.txt"
    return [json.loads(line) for line in path.read_text().splitlines()]


def pickled_modules(path: Path):
    """Module names of the classes a ``torch.save`` file's pickle refers to (read without unpickling)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    modules, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        elif opcode.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
    return modules


class _StockOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("batmobile_nn"):
            raise AssertionError(f"pickle needs batmobile_nn: {module}.{name}")
        return super().find_class(module, name)


class _StockOnlyPickle:
    """A ``pickle_module`` for ``torch.load`` that refuses every batmobile_nn class."""

    Unpickler = _StockOnlyUnpickler
    load = staticmethod(lambda f, **kw: _StockOnlyUnpickler(f, **kw).load())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """mace runs on 1 thread here: on CI's 2 shared cores, more OpenMP threads spin and slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_emt")
    configs = make_emt_dataset(11, seed=0, small=True)
    ase.io.write(directory / "train.xyz", configs[:8])
    ase.io.write(directory / "valid.xyz", configs[8:])
    return directory


@pytest.fixture(scope="module")
def flagged_run(tiny_data, tmp_path_factory):
    """``batmobile-nn train ... --enable_batmobile=True`` (2 epochs); records the models ``patch`` returned."""
    work_dir = tmp_path_factory.mktemp("flagged")
    patched_models = []
    real_patch = batmobile_nn.patches.patch

    def spy_patch(model, **kwargs):
        patched_models.append(real_patch(model, **kwargs))
        return patched_models[-1]

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(batmobile_nn.patches, "patch", spy_patch)
        assert main(["train", *tiny_mace_args(tiny_data, work_dir), "--enable_batmobile=True"]) == 0
    return work_dir, patched_models


def test_flag_trains_a_patched_model(flagged_run):
    work_dir, patched_models = flagged_run
    assert len(patched_models) == 1
    model = patched_models[0]
    assert batmobile_nn.patches.is_patched(model)  # the live training model stayed patched to the end
    n_fused = sum(isinstance(m, batmobile_nn.nn.EquivariantConv) for m in model.modules())
    assert n_fused == 2  # both interaction blocks
    # the blocks stay mace's classes (no fusion while training): run_train reads them into the compiled
    # model's config.yaml
    assert [type(block).__name__ for block in model.interactions] == ["RealAgnosticInteractionBlock",
                                                                      "RealAgnosticResidualInteractionBlock"]
    extra = {"config.yaml": ""}
    torch.jit.load(work_dir / "tiny_compiled.model", map_location="cpu", _extra_files=extra)
    config = json.loads(extra["config.yaml"])
    assert "RealAgnosticInteractionBlock" in config["interaction_cls_first"], config["interaction_cls_first"]
    assert "RealAgnosticResidualInteractionBlock" in config["interaction_cls"], config["interaction_cls"]
    assert "batmobile_nn: patching" in (work_dir / "logs" / f"tiny_run-{SEED}.log").read_text()
    epochs = {line["epoch"] for line in results(work_dir) if line["mode"] == "opt"}
    assert epochs == {0, 1}


def test_saved_files_are_stock_mace(flagged_run, tiny_data):
    work_dir, patched_models = flagged_run
    saved = [work_dir / "tiny.model", work_dir / "checkpoints" / f"tiny_run-{SEED}.model"]
    checkpoints = list((work_dir / "checkpoints").glob("*.pt"))
    assert all(path.exists() for path in saved) and checkpoints
    for path in saved + checkpoints:
        modules = pickled_modules(path)
        assert not any(m.startswith("batmobile_nn") for m in modules), (path, modules)
    assert any(m.startswith("mace.modules") for m in pickled_modules(saved[0]))

    stock = torch.load(saved[0], map_location="cpu", weights_only=False, pickle_module=_StockOnlyPickle)
    assert not batmobile_nn.patches.is_patched(stock)
    state = stock.state_dict()
    trained = patched_models[0].state_dict()
    assert state.keys() == trained.keys()
    # the saved weights are the checkpoint's (the best epoch), which the live model reloaded before saving
    assert all(torch.equal(state[k], trained[k].cpu()) for k in state)

    from mace.calculators import MACECalculator

    atoms = ase.io.read(tiny_data / "valid.xyz", 0)
    calculator = MACECalculator(models=stock, device="cpu", default_dtype="float64")
    atoms.calc = calculator
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


def test_losses_equal_stock_mace_in_float64(flagged_run, tiny_data, tmp_path):
    from mace.cli.run_train import run as mace_run
    from mace.tools import build_default_arg_parser

    flagged_dir, _ = flagged_run
    with restored_global_state():
        mace_run(build_default_arg_parser().parse_args(tiny_mace_args(tiny_data, tmp_path / "stock")))
    assert main(["train", *tiny_mace_args(tiny_data, tmp_path / "no_flag")]) == 0

    def losses(work_dir):
        lines = results(work_dir)
        return np.array([[line["loss"], line.get("rmse_e", 0.0), line.get("rmse_f", 0.0)] for line in lines])

    stock = losses(tmp_path / "stock")
    assert len(stock) == 1 + 2 * (4 + 1)  # initial eval, then per epoch 4 steps (8 configs / 2) + eval
    np.testing.assert_allclose(losses(tmp_path / "no_flag"), stock, rtol=1e-8, atol=0)
    np.testing.assert_allclose(losses(flagged_dir), stock, rtol=1e-8, atol=0)
    assert np.ptp(stock[:, 0]) > 1e-3  # the losses do change: the comparison can fail


def test_checkpoint_resumes(flagged_run, tiny_data, tmp_path):
    flagged_dir, _ = flagged_run
    work_dir = tmp_path / "resumed"
    shutil.copytree(flagged_dir, work_dir)
    before = results(work_dir)
    (checkpoint,) = (work_dir / "checkpoints").glob("*.pt")
    checkpoint_epoch = int(checkpoint.stem.split("epoch-")[1])
    args = tiny_mace_args(tiny_data, work_dir, epochs=4)
    assert main(["train", *args, "--restart_latest", "--enable_batmobile=True"]) == 0

    new = results(work_dir)[len(before):]
    eval_at_checkpoint = next(line for line in before if line["mode"] == "eval" and line["epoch"] == checkpoint_epoch)
    assert new[0]["mode"] == "eval" and new[0]["epoch"] is None
    np.testing.assert_allclose(new[0]["loss"], eval_at_checkpoint["loss"], rtol=1e-10)  # weights restored
    resumed_epochs = {line["epoch"] for line in new if line["mode"] == "opt"}
    assert resumed_epochs == set(range(checkpoint_epoch, 4))
    assert (work_dir / "tiny.model").exists()


def test_enable_batmobile_from_yaml_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("name: from_yaml\ntrain_file: train.xyz\nenable_batmobile: true\nmax_num_epochs: 3\n")
    args = build_arg_parser().parse_args(["--config", str(config)])
    assert args.enable_batmobile is True and args.max_num_epochs == 3
    overridden = build_arg_parser().parse_args(["--config", str(config), "--enable_batmobile=False"])
    assert overridden.enable_batmobile is False
    assert build_arg_parser().parse_args(["--name", "x"]).enable_batmobile is False


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_enable_batmobile(config):
    args = build_arg_parser().parse_args(["--config", str(config)])
    assert args.enable_batmobile is True
    if args.foundation_model is not None:
        assert (REPO / args.foundation_model).exists()


def test_flag_rejects_other_accelerators(tiny_data, tmp_path):
    args = tiny_mace_args(tiny_data, tmp_path)
    with pytest.raises(ValueError, match="enable_cueq"):
        main(["train", *args, "--enable_batmobile=True", "--enable_cueq=True"])
