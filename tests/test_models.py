"""Backbones, JointModel, third-party weight loaders, the checkpoint format and the convert CLI."""

import numpy as np
import pytest
import torch

from ccfast.checkpoint import load_checkpoint, read_checkpoint
from ccfast.convert import main as convert_main
from ccfast.errors import CCFastError
from ccfast.models import ARCHS, build_backbone, build_model, extract_state_dict, load_backbone_weights
from conftest import SHARED_DATA


@pytest.mark.parametrize("arch,size", [("tiny", 16), ("cifar_resnet20", 32), ("cifar_resnet56", 32)])
def test_forward_shapes(arch, size):
    m = build_model(arch, 10).eval()
    assert m(torch.rand(2, 3, size, size)).shape == (2, 10)


def test_resnet50_family_uses_torchvision_names_and_takes_64px():
    sd = build_backbone("resnet50", 1000).state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                "layer4.2.conv3.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"):
        assert key in sd
    assert (
        sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        == 25_557_032
    )
    wide = build_backbone("wide_resnet50_2", 1000).state_dict()
    assert (
        sum(
            v.numel() for k, v in wide.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        == 68_883_240
    )
    m = build_model("resnet50", 1000).eval()
    assert m(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_normalisation_inside_model():
    m = build_model("tiny", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(m(x), m.backbone((x - 0.5) / 0.25))


def test_robustness_checkpoint_layout(tmp_path):
    src = build_backbone("cifar_resnet20", 10)
    sd = src.state_dict()
    payload = {"model": {**{f"module.model.{k}": v for k, v in sd.items()},
                         **{f"module.attacker.model.{k}": v + 1 for k, v in sd.items()},
                         "module.normalizer.new_mean": torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1),
                         "module.normalizer.new_std": torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1)}, "epoch": 3}
    path = tmp_path / "robust.pt"
    torch.save(payload, path)
    dst = build_backbone("cifar_resnet20", 10)
    norm = load_backbone_weights(dst, path, arch="cifar_resnet20")
    assert norm == {"mean": pytest.approx((0.1, 0.2, 0.3)), "std": pytest.approx((0.4, 0.5, 0.6))}
    for k, v in dst.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_fresh_head_when_class_count_differs(tmp_path):
    src = build_backbone("tiny", 10)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = build_backbone("tiny", 5)
    load_backbone_weights(dst, path, arch="tiny")
    assert torch.equal(dst.conv1.weight, src.conv1.weight) and dst.fc.weight.shape == (5, 16)
    with pytest.raises(CCFastError, match="do not match architecture"):
        load_backbone_weights(build_backbone("cifar_resnet20", 10), path, arch="cifar_resnet20")


def test_weights_only_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(CCFastError, match="weights_only"):
        load_backbone_weights(build_backbone("tiny", 10), path, arch="tiny")


def test_extract_state_dict_strips_prefixes():
    sd, norm = extract_state_dict(
        {"state_dict": {"module.conv.weight": torch.zeros(1), "module.bn.num_batches_tracked": torch.tensor(1)}}
    )
    assert list(sd) == ["conv.weight"] and norm == {}


@pytest.mark.skipif(
    not (SHARED_DATA / "models" / "resnet20-12fca82f.th").exists(), reason="shared CIFAR-10 models not present"
)
def test_shared_cifar_resnet_converts_and_classifies(tmp_path):
    out = tmp_path / "r20.pt"
    test_npz = SHARED_DATA / "cifar10" / "test.npz"
    with np.load(test_npz) as z:
        images, labels = z["images"][:500], z["labels"][:500]
    real = tmp_path / "real.npz"
    np.savez(real, images=images, labels=labels)
    assert convert_main(["--arch", "cifar_resnet20", "--weights", str(SHARED_DATA / "models" / "resnet20-12fca82f.th"),
                         "--out", str(out), "--ell0-data", str(real)]) == 0
    model, info = load_checkpoint(out)
    assert info.ell0 is not None and info.image_size == (32, 32)
    from ccfast.data import uint8_to_float

    with torch.no_grad():
        acc = (model(uint8_to_float(images)).argmax(1).numpy() == labels).mean()
    assert acc > 0.85  # 91.7% on the full test set (shared/data/README.md)


def test_checkpoint_round_trip(tmp_path):
    from factories import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path / "c.pt", ell0=1.25)
    payload, info = read_checkpoint(path)
    assert info.ell0 == 1.25 and info.arch == "tiny" and payload["ccfast_version"]
    model, _ = load_checkpoint(path)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert sorted(ARCHS) == sorted(set(ARCHS))
