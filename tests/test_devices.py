"""`ccfast.devices.resolve_device`: the one reading of `--device` for every CLI, the `Refiner` and the trainer.

CUDA's presence is faked with monkeypatch so that the GPU branches run on the CPU machine too; nothing here
creates a CUDA context (the function only asks is_available / device_count, and set_device under torchrun).
"""

import numpy as np
import pytest
import torch

from ccfast.devices import DistContext, resolve_device
from ccfast.errors import CCFastError


def fake_gpus(monkeypatch, count: int) -> list:
    """Pretend `count` GPUs are visible; returns the list that records set_device calls."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    return current


@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_is_cpu_without_a_gpu(monkeypatch, name):
    fake_gpus(monkeypatch, 0)
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_is_cuda_with_a_gpu(monkeypatch, name):
    current = fake_gpus(monkeypatch, 1)
    assert resolve_device(name) == torch.device("cuda")
    assert current == []  # one process: the caller's current device is left alone


@pytest.mark.parametrize("name", ["cpu", torch.device("cpu")])
def test_cpu(monkeypatch, name):
    fake_gpus(monkeypatch, 2)
    assert resolve_device(name) == torch.device("cpu")
    assert resolve_device(name, DistContext(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")


def test_explicit_gpu_index(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name, says", [
    ("bogus", "not a device PyTorch knows"),
    ("cuda:x", "not a device PyTorch knows"),
    ("", "not a device PyTorch knows"),
    ("mps", "runs on cpu or cuda"),
    ("meta", "runs on cpu or cuda"),
])
def test_bad_values_are_one_line_errors(monkeypatch, name, says):
    fake_gpus(monkeypatch, 1)
    with pytest.raises(CCFastError, match=says) as info:
        resolve_device(name)
    assert str(info.value).startswith(f"--device {name!r}") and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch, name):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(CCFastError, match="no CUDA GPU is visible to PyTorch; use --device cpu"):
        resolve_device(name)


def test_gpu_index_past_the_last_is_an_error(monkeypatch):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(CCFastError, match=r"--device cuda:2: only 2 CUDA GPU\(s\) visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", [None, "auto", "cuda", "cuda:0"])
def test_torchrun_rank_takes_its_local_gpu(monkeypatch, name):
    current = fake_gpus(monkeypatch, 4)
    ctx = DistContext(rank=6, world_size=8, local_rank=2)
    assert resolve_device(name, ctx) == torch.device("cuda", 2)
    assert current == [torch.device("cuda", 2)]  # NCCL and DDP use the current device


def test_torchrun_local_rank_without_its_gpu_is_an_error(monkeypatch):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(CCFastError, match="only 2 CUDA GPU"):
        resolve_device("cuda", DistContext(rank=3, world_size=4, local_rank=3))


def test_clis_report_a_bad_device_in_one_line(tmp_path, capsys):
    """Each command line reads --device through resolve_device: exit 2 and one line, before a model loads."""
    from ccfast.evaluate.__main__ import main as evaluate_main
    from ccfast.refine.__main__ import main as refine_main
    from ccfast.train import main as train_main

    missing = str(tmp_path / "missing")
    images = tmp_path / "images.npz"  # evaluate inspects its inputs' headers before the device
    np.savez(images, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    runs = {
        "python -m ccfast.refine": lambda: refine_main(["--checkpoint", missing, "--input", missing + ".npz",
                                                        "--output", str(tmp_path / "out.npz"), "--device", "bogus"]),
        "python -m ccfast.train": lambda: train_main(["--real", missing, "--fake", missing + ".npz",
                                                      "--out", str(tmp_path / "run"), "--device", "bogus"]),
        "python -m ccfast.evaluate": lambda: evaluate_main(["--ref", str(images), "--samples", str(images),
                                                            "--device", "bogus", "--no-cache"]),
    }
    for prog, run in runs.items():
        assert run() == 2, prog
        err = capsys.readouterr().err
        assert err.strip() == f"{prog}: error: --device 'bogus' is not a device PyTorch knows (try cpu, cuda or cuda:0)"
