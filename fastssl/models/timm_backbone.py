"""Any timm model as the backbone: `--model.name=timm/<name>` (extra: timm), weights from a local file only.

The timm network is built with `pretrained=False` (nothing is ever downloaded) and `--model.pretrained=PATH`
loads a state dict saved from the same timm architecture (`torch.save(model.state_dict(), PATH)`, or a
.safetensors file). The network keeps its own classifier as `head` (the fastssl model contract: `forward`,
`forward_features` -> (N, num_features), `head` the final Linear, `num_features`); timm's classifier is
detached with `reset_classifier(0)`, after which timm's forward returns the pooled (pre-logits) features.

timm needs torchvision, and torchvision's wheels must be the build of the installed torch: with a CPU torch,
install torchvision from PyTorch's CPU index (PyPI's Linux wheels are CUDA builds and fail to import there).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

TORCHVISION_HINT = ("timm needs a torchvision built for the installed torch {torch}; with a CPU torch: "
                    "pip install torchvision --index-url https://download.pytorch.org/whl/cpu")


def check_timm(name: str, pretrained: str | None) -> None:
    """Config-time checks that need no import: timm is installed, a name follows timm/, the weights file exists."""
    if importlib.util.find_spec("timm") is None:
        raise ValueError(f"--model.name={name} needs the timm package: pip install \"fastssl[timm]\"")
    if name == "timm/":
        raise ValueError("--model.name=timm/ needs a model name, e.g. timm/resnet18 (timm.list_models() lists them)")
    if pretrained and not Path(pretrained).is_file():
        raise ValueError(f"--model.pretrained={pretrained}: no such file (a state dict saved from the timm model)")


def _import_timm():
    try:
        import timm
    except Exception as e:  # a torchvision of another torch build fails inside its own import, not with ImportError
        raise ValueError(f"timm failed to import ({type(e).__name__}: {e}); "
                         + TORCHVISION_HINT.format(torch=torch.__version__)) from None
    return timm


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a torch file (bare, or under 'state_dict' / 'model') or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--model.pretrained={path}: not a state dict (expected {{name: tensor}})")
    return obj


def load_local_weights(net: nn.Module, path: str | os.PathLike, classifier: str | tuple[str, ...]) -> list[str]:
    """Loads `path` into `net` strictly, except the classifier (`classifier`: its module path(s)): one saved
    for another class count is left freshly initialised. Returns the replaced keys; any other missing,
    unexpected or differently shaped key fails with one line that names the file and the keys."""
    saved, own = read_state_dict(path), net.state_dict()
    prefixes = tuple(c + "." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    replaced = sorted(k for k in saved if k.startswith(prefixes) and k in own and saved[k].shape != own[k].shape)
    for k in replaced:
        del saved[k]
    missing = sorted(set(own) - set(saved) - set(replaced))
    unexpected = sorted(set(saved) - set(own))
    shapes = [f"{k} {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(saved) & set(own)) if saved[k].shape != own[k].shape]
    problems = [f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise ValueError(f"--model.pretrained={path} does not fit this model: {'; '.join(problems)}")
    net.load_state_dict(saved, strict=False)  # strict=False only for the replaced classifier keys
    return replaced


class TimmBackbone(nn.Module):
    """A timm network under the fastssl contract: `net` (classifier removed) -> pooled features, `head`."""

    def __init__(self, net: nn.Module, head: nn.Linear):
        super().__init__()
        self.net = net
        self.head = head
        self.num_features = head.in_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def build_timm(name: str, *, num_classes: int, in_channels: int, pretrained: str | None = None) -> TimmBackbone:
    """`name` without the timm/ prefix; `pretrained` a local weights file (see load_local_weights)."""
    timm = _import_timm()
    if not timm.is_model(name):
        raise ValueError(f"--model.name=timm/{name}: timm {timm.__version__} has no such model "
                         f"(timm.list_models('*{name[:6]}*') lists similar names)")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    classifier = net.pretrained_cfg.get("classifier", "")
    if pretrained:
        replaced = load_local_weights(net, pretrained, classifier)
        if replaced and os.environ.get("RANK", "0") == "0":
            print(f"fastssl: {pretrained}: classifier {classifier} was saved for another class count "
                  f"({', '.join(replaced)}); starting it fresh for {num_classes} classes", flush=True)
    head = net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"--model.name=timm/{name}: its classifier is a {type(head).__name__}, not a Linear; "
                         "fastssl's algorithms need a Linear head on pooled features")
    net.reset_classifier(0)
    return TimmBackbone(net, head)
