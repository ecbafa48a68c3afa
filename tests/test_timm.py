"""--model.name=timm/<name>: the fastssl model contract on timm networks, local weights only (loaded exactly,
mismatches named), and FixMatch training a timm resnet18 on an image folder that DALI decodes."""
import importlib.util

import numpy as np
import pytest
import torch

from fastssl.config import Config, apply_overrides
from fastssl.models import build_model
from fastssl.train.trainer import Trainer


def _timm():
    try:
        import timm
    except ImportError:
        pytest.skip("optional extra: pip install 'fastssl[timm]'")
    except RuntimeError as e:  # PyPI's torchvision (a CUDA build) under a CPU torch fails inside its import
        pytest.skip(f"timm does not import here ({e}): torchvision must be the build of this torch")
    return timm


def _image_folder(root, classes=3, train_per_class=8, val_per_class=4, side=32):
    """PNG files root/{train,val}/c<k>/, each class a different mean colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(n):
                base = np.array([60 + 70 * k, 200 - 60 * k, 128], dtype=np.int16)
                img = np.clip(base + rng.integers(-40, 41, (side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_contract_forward_features_head_num_features():
    _timm()
    model = build_model("timm/resnet18", num_classes=5, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features) and model.num_features == 512
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 5
    torch.testing.assert_close(model(x), model.head(feats))
    assert not any(isinstance(m, torch.nn.Linear) for m in model.net.modules())  # the only classifier is `head`


@pytest.mark.slow  # inductor compiles the network: 75 s on 2 shared cores
def test_channels_last_and_compile_match_eager():
    _timm()
    torch.manual_seed(0)
    model = build_model("timm/test_resnet", num_classes=4, in_channels=3).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        compiled = torch.compile(model)
        out = compiled(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_local_weights_load_exactly_and_mismatches_are_named(tmp_path, capsys):
    timm = _timm()
    src = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(src.state_dict(), path)
    model = build_model("timm/resnet18", num_classes=3, in_channels=3, pretrained=str(path))
    assert "classifier fc was saved for another class count (fc.bias, fc.weight)" in capsys.readouterr().out
    saved = torch.load(path)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert model.head.weight.shape == (3, 512)

    torch.save({"state_dict": src.state_dict()}, path)  # wrapped dicts are read too; same class count: head kept
    model = build_model("timm/resnet18", num_classes=7, in_channels=3, pretrained=str(path))
    assert torch.equal(model.head.weight, src.fc.weight)

    with pytest.raises(ValueError, match=r"r18\.pt does not fit this model: shape conv1\.weight \(64, 3, 7, 7\) "
                                         r"vs model \(64, 1, 7, 7\) \(1\)"):
        build_model("timm/resnet18", num_classes=7, in_channels=1, pretrained=str(path))
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match=r"r34\.pt does not fit this model: unexpected layer1\.2\.bn1\.bias"):
        build_model("timm/resnet18", num_classes=7, in_channels=3, pretrained=str(tmp_path / "r34.pt"))
    with pytest.raises(ValueError, match="timm .* has no such model"):
        build_model("timm/resnet_does_not_exist", num_classes=7)


def test_missing_weights_file_fails_at_config_time(tmp_path):
    cfg = Config()
    apply_overrides(cfg, {"model.name": "timm/resnet18", "model.pretrained": str(tmp_path / "nope.pt")})
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ValueError, match=r'needs the timm package: pip install "fastssl\[timm\]"'):
            cfg.validate()
    else:
        with pytest.raises(ValueError, match=r"--model.pretrained=.*nope\.pt: no such file"):
            cfg.validate()
    apply_overrides(cfg, {"model.name": "cnn_small"})
    with pytest.raises(ValueError, match="--model.pretrained works with timm/<name> models"):
        cfg.validate()


def test_fixmatch_trains_timm_resnet18_from_local_weights_on_an_image_folder(tmp_path):
    timm = _timm()
    root = _image_folder(tmp_path / "images")
    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(123)
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), weights)
    cfg = Config()
    apply_overrides(cfg, {"data.name": "imagefolder", "data.root": str(root), "data.image_size": 32,
                          "data.num_labels": 6, "data.batch_size": 4, "data.uratio": 2, "data.eval_batch_size": 12,
                          "model.name": "timm/resnet18", "model.pretrained": str(weights),
                          "train.steps": 20, "train.eval_every": 10, "train.log_every": 10, "train.ckpt_every": 0,
                          "train.progress": False, "train.compile": "off", "train.channels_last": "on",
                          "train.out": str(tmp_path / "run")})
    trainer = Trainer(cfg)
    saved = torch.load(weights)
    for k, v in trainer.model.net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    torch.testing.assert_close(trainer.model.head.weight, saved["fc.weight"], rtol=0, atol=0)
    summary = trainer.fit()
    assert summary["step"] == 20 and 0.0 <= summary["top1"] <= 100.0
    assert trainer.history[-1]["eval_samples"] == 12 and np.isfinite(trainer.history[-1]["loss"])
    assert not torch.equal(trainer.model.net.conv1.weight.detach(), saved["conv1.weight"])  # it trained
