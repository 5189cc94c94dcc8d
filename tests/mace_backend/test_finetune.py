"""Fine-tuning the embedded demo model with ``batmobile-nn train --foundation_model ... --enable_batmobile=True``
(naive, and multi-head with replay of pretraining data): a patched model trains, stock models are saved."""

import ase.io
import pytest

pytest.importorskip("mace")

import torch  # noqa: E402

import batmobile_nn  # noqa: E402
import batmobile_nn.patches  # noqa: E402
from batmobile_nn.cli import main  # noqa: E402
from batmobile_nn.md import DEFAULT_MODEL  # noqa: E402
from batmobile_nn.training.emt_data import isolated_atoms, make_emt_dataset  # noqa: E402

SEED = 1


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """mace runs on 1 thread here: on CI's 2 shared cores, more OpenMP threads spin and slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finetune_emt")
    configs = make_emt_dataset(13, seed=4, small=True)
    ase.io.write(directory / "train.xyz", configs[:6])
    ase.io.write(directory / "valid.xyz", configs[6:9])
    ase.io.write(directory / "pretrain.xyz", isolated_atoms() + configs[9:])  # replay data for multi-head
    return directory


def finetune(data, work_dir, *extra):
    """One epoch of fine-tuning with the flag; returns the models ``batmobile_nn.patches.patch`` returned."""
    patched = []
    real_patch = batmobile_nn.patches.patch
    args = ["train", "--name", "ft", "--work_dir", str(work_dir), "--seed", str(SEED),
            "--foundation_model", str(DEFAULT_MODEL), "--train_file", str(data / "train.xyz"),
            "--valid_file", str(data / "valid.xyz"), "--E0s", "foundation", "--model", "MACE",
            "--batch_size", "2", "--valid_batch_size", "3", "--max_num_epochs", "1", "--lr", "0.001",
            "--default_dtype", "float32", "--device", "cpu", "--enable_batmobile=True", *extra]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(batmobile_nn.patches, "patch",
                            lambda model, **kwargs: patched.append(real_patch(model, **kwargs)) or patched[-1])
        assert main(args) == 0
    return patched


def check_stock_finetuned_model(work_dir, patched):
    assert len(patched) == 1 and batmobile_nn.patches.is_patched(patched[0])
    assert sum(isinstance(m, batmobile_nn.nn.EquivariantConv) for m in patched[0].modules()) == 2
    path = work_dir / "ft.model"
    assert b"batmobile_nn" not in path.read_bytes()  # the pickle refers to no batmobile_nn class
    model = torch.load(path, map_location="cpu", weights_only=False)
    foundation = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=False)
    assert not batmobile_nn.patches.is_patched(model)
    assert float(model.r_max) == float(foundation.r_max) and len(model.interactions) == len(foundation.interactions)
    # started from the foundation's weights and moved away from them
    key = "interactions.0.conv_tp_weights.layer0.weight"
    start, tuned = foundation.state_dict()[key], model.state_dict()[key]
    assert start.shape == tuned.shape and not torch.equal(start, tuned)
    assert (tuned - start).abs().max() < 0.1 * start.abs().max()
    return model


def test_naive_finetuning(finetune_data, tmp_path):
    patched = finetune(finetune_data, tmp_path)
    model = check_stock_finetuned_model(tmp_path, patched)
    assert list(model.heads) == ["Default"]


def test_multihead_finetuning(finetune_data, tmp_path):
    patched = finetune(finetune_data, tmp_path, "--multiheads_finetuning=True",
                       "--pt_train_file", str(finetune_data / "pretrain.xyz"), "--force_mh_ft_lr=True")
    model = check_stock_finetuned_model(tmp_path, patched)
    assert list(model.heads) == ["pt_head", "Default"]
    log = (tmp_path / "logs" / f"ft_run-{SEED}.log").read_text()
    assert "Using multiheads finetuning mode" in log
