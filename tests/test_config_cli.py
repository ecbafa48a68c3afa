"""Options: parsing, documentation, and bad values failing before any training with a message naming the fix."""
import dataclasses
import json

import pytest

from fastssl.cli import main, make_config, parse_overrides
from fastssl.algorithms import ALGORITHMS
from fastssl.config import Config, apply_overrides, describe


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_override_parsing_and_types():
    over, plain = parse_overrides(["--algo.tau=0.9", "--train.steps", "10", "--recipe", "cifar10_fixmatch_40"])
    assert over == {"algo.tau": "0.9", "train.steps": "10"} and plain == {"recipe": "cifar10_fixmatch_40"}
    cfg = make_config({**over, "train.compile": "off", "data.svhn_extra": "true", "aug.ops": "Rotate, Equalize",
                       "aug.cutout_fill": "1,2,3"}, plain["recipe"])
    assert cfg.aug.ops == ("Rotate", "Equalize") and cfg.aug.cutout_fill == (1, 2, 3)
    assert cfg.algo.tau == 0.9 and cfg.train.steps == 10 and cfg.data.svhn_extra is True
    assert cfg.data.name == "cifar10" and cfg.data.num_labels == 40 and cfg.model.name == "wrn_28_2"
    assert cfg.data.batch_size == 64 and cfg.train.steps == 10  # user overrides beat the recipe


def test_config_json_round_trip():
    cfg = make_config({"algo.tau": "0.8", "train.steps": "123", "optim.lr": "0.1"}, None)
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again.to_dict() == cfg.to_dict()


def test_every_option_is_documented(capsys):
    cfg = Config()
    rows = describe(cfg)
    undocumented = [opt for opt, _, doc in rows if not doc]
    assert not undocumented, f"options without a docstring under the field: {undocumented}"
    n_fields = sum(len(dataclasses.fields(getattr(cfg, s))) for s in ("data", "model", "optim", "train", "aug", "algo"))
    assert len(rows) == n_fields + 1  # + --algo.name
    code, out, _ = run_cli(capsys, "train", "--algo.name=fixmatch", "--help")
    assert code == 0
    for opt, default, _ in rows:
        assert f"{opt}={default}" in out
    # plain `train --help` (no Config built): the same rows but the algorithm's own, which it points to
    code, plain, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "fastssl train --algo.name=NAME --help" in plain
    for opt, default, _ in rows:
        assert (f"{opt}={default}" in plain) == (not opt.startswith("--algo.") or opt == "--algo.name"), opt


@pytest.mark.parametrize("argv, needle", [
    (["--optim.lr=-0.1"], "--optim.lr=-0.1 must be > 0"),
    (["--algo.name=nosuchalgo"], "unknown algorithm --algo.name='nosuchalgo'; choose one of"),
    (["--recipe=nosuchrecipe"], "unknown recipe --recipe='nosuchrecipe'; choose one of"),
    (["--data.name=cifar10"], "--data.name=cifar10 needs --data.root=FOLDER"),
    (["--model.name=resnet9000"], "unknown model --model.name='resnet9000'"),
    (["--algo.taux=0.9"], "unknown option(s) --algo.taux"),
    (["--aug.flip_prob=2"], "--aug.flip_prob=2.0 must be in [0, 1]"),
    (["--aug.ops=Rotate,Nope"], "--aug.ops has unknown ops"),
    (["--trian.steps=3"], "unknown option --trian.steps"),
    (["--train.stpes=3"], "unknown option(s) --train.stpes; valid in this section"),
    (["--train.steps=ten"], "--train.steps='ten' is not a valid int"),
    (["--train.compile=maybe"], "--train.compile='maybe': use auto, on or off"),
    (["--data.num_labels=45"], "not divisible by 10 classes"),
    (["--data.name=cifar10", "--data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--algo.tau=1.5"], "--algo.tau=1.5 is a confidence threshold: use (0, 1]"),
    (["--algo.lambda_u=-1"], "--algo.lambda_u=-1.0 is a loss weight: use ≥ 0"),
    (["--data.name=imagefolder", "--data.root=/nonexistent/imgs"], "imagefolder needs --data.image_size=N"),
    (["--data.name=cifar11"], "unknown dataset --data.name='cifar11'; choose one of: digits, mnist"),
])
def test_bad_options_fail_before_training(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, "train", f"--train.out={tmp_path / 'run'}", *argv)
    assert code == 2, (out, err)
    assert needle in err, err
    assert "step " not in out + err  # no training step ran
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_refuses_impossible_shared_fields(name):
    """Each probability, weight, temperature and fraction field is range-checked in every algorithm that has
    it, whichever `__post_init__` the algorithm defines; the defaults pass."""
    bad = {"tau": ["0", "1.5"], "ema_p": ["1", "-0.1"], "T": ["0"], "mcc_T": ["0"], "n_sigma": ["0"],
           "unsup_warmup": ["1.5"], "warmup_frac": ["-0.1"], "rho_update_frac": ["2"]}
    cfg = Config()
    apply_overrides(cfg, {"algo.name": name})
    cfg.validate()
    fields = [f.name for f in dataclasses.fields(cfg.algo)]
    for f in fields:
        values = bad.get(f, ["-0.5"] if f.startswith("lambda_") or f.endswith("_weight") else [])
        for v in values:
            with pytest.raises(ValueError, match=rf"--algo\.{f}="):  # the algorithm's own check, or validate's
                apply_overrides(Config(), {"algo.name": name, f"algo.{f}": v}).validate()
    assert "lambda_u" in fields and (name not in ("fixmatch", "flexmatch", "uda") or "tau" in fields)


def test_eval_names_its_own_option(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / "missing.pt"))
    assert code == 2 and f"--checkpoint={tmp_path / 'missing.pt'}: no such file or folder" in err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path))
    assert code == 2 and f"--checkpoint={tmp_path}: no ckpt-<step>.pt in this folder" in err
    assert "--train.resume" not in err


def test_algo_options_follow_algo_name():
    cfg = Config()
    apply_overrides(cfg, {"algo.name": "supervised", "algo.lambda_u": "0"})
    assert cfg.algo_name == "supervised" and not hasattr(cfg.algo, "tau")
    with pytest.raises(ValueError, match=r"unknown option\(s\) --algo.tau; valid in this section: .*--algo.lambda_u"):
        apply_overrides(cfg, {"algo.tau": "0.5"})


def test_info_lists_registries(capsys):
    from fastssl.algorithms import ALGORITHMS
    from fastssl.data.registry import DATASETS
    from fastssl.models.registry import MODELS

    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "cifar10_fixmatch_40" in out
    assert out.splitlines()[0] == "algorithms: " + ", ".join(sorted(ALGORITHMS))
    for name, entry in {**MODELS, **DATASETS}.items():  # one line per registry entry, with its facts
        assert f"  {name:12} {entry.summary}" in out


def test_unknown_dataset_and_model_fail_with_the_registry_names(capsys):
    code, _, err = run_cli(capsys, "train", "--data.name=cifar11")
    assert code == 2 and "--data.name='cifar11'" in err and "stl10" in err
    code, _, err = run_cli(capsys, "train", "--model.name=resnet")
    assert code == 2 and "--model.name='resnet'" in err and "wrn_28_2" in err


def test_augment_config_is_ground_floor_and_knows_every_dali_op():
    """AugmentConfig lives in config.py (no DALI to parse --aug.*); its op names are exactly the ops the DALI
    views implement."""
    from fastssl.config import FIXMATCH_POOL, AugmentConfig
    from fastssl.data import augment

    assert augment.AugmentConfig is AugmentConfig and set(FIXMATCH_POOL) == set(augment.OP_RANGES)
    with pytest.raises(ValueError, match="--aug.ops has unknown ops"):
        AugmentConfig(ops=("Invert2",))


def test_help_defaults_parse_back_to_themselves():
    """Every default shown by --help, typed back on the command line, gives the same config."""
    cfg = Config()
    typed = {opt[2:]: default for opt, default, _ in describe(cfg)}
    again = Config()
    apply_overrides(again, typed)
    assert again.to_dict() == cfg.to_dict()
