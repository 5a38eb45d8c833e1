"""Search-space files: validation errors, overrides, define-by-run, seeded searcher, shipped spaces."""

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from derm.config import RunConfig
from derm.errors import ConfigError
from derm.search_space import (
    DEMO_OVERRIDES,
    apply_demo,
    build_searcher,
    load_search_space,
    resolve_trial_config,
    tpe_startup_trials,
    trial_overrides,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {
    "unet": "ham10000",
    "multitask": "ham10000",
    "attributes": "isic2018-task2",
    "classification": "ham10000",
}
MULTITASK_DEFAULT_ENCODERS = {"resnet34", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2",
                              "efficientnet-b3", "tu-convnext_tiny"}

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """
    task: multitask
    model:
      arch: {choice: [Unet, FPN, Segformer]}
      encoder:
        depends_on: model.arch
        cases:
          Segformer: {choice: [mit_b0, mit_b1]}
          default: {choice: [resnet18, mobilenet_v2]}
    optim:
      name: {choice: [adam, sgd]}
      lr: {loguniform: [1.0e-5, 1.0e-2]}
      momentum: {uniform: [0.8, 0.99], when: {optim.name: sgd}}
      warmup_epochs: {int: [0, 4], step: 2}
    train: {epochs: 5}
    sweep:
      num_samples: 12
      grace_period: 1
      points_to_evaluate:
        - {model.arch: Segformer, model.encoder: mit_b1, optim.name: adam, optim.lr: 1.0e-3}
        - {model.arch: FPN, model.encoder: mobilenet_v2, optim.name: sgd, optim.momentum: 0.95}
"""


def write_space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def random_draws(space, n: int, seed: int = 0):
    """n (trial params, define_by_run return) pairs from an in-memory study with RandomSampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        draws.append({**trial.params, **(constants or {})})
        study.tell(trial, 0.0)
    return draws


# --- the shipped spaces ---------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_with_and_without_demo(name):
    space = load_search_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.name == name
    assert space.parameters, "a shipped space searches something"
    assert space.seed_points, "each shipped space seeds a known configuration"
    assert space.base_config.model.encoder_weights == "imagenet"

    demo = apply_demo(space, "/tmp/demo-data", SHIPPED[name])
    assert demo.is_demo
    assert demo.base_config.data.image_size == DEMO_OVERRIDES["data.image_size"] == 64
    assert demo.base_config.data.root == "/tmp/demo-data"
    assert demo.base_config.data.layout == SHIPPED[name]
    assert demo.base_config.model.encoder_weights is None
    assert demo.base_config.train.epochs == 4
    assert demo.sweep.num_samples == 10 and demo.sweep.max_concurrent == 2
    assert (demo.sweep.resources.cpu, demo.sweep.resources.gpu) == (1.0, 0.0)
    # The demo narrows some choices but searches the same keys.
    assert demo.searched_keys == space.searched_keys


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("demo", [False, True], ids=["full", "demo"])
def test_fifty_random_draws_of_each_shipped_space_resolve(name, demo):
    space = load_search_space(REPO / "search_spaces" / f"{name}.yaml")
    if demo:
        space = apply_demo(space, "/tmp/demo-data", SHIPPED[name])
    for params in random_draws(space, 50, seed=len(name)):
        cfg = resolve_trial_config(space, params)
        assert isinstance(cfg, RunConfig)
        assert cfg.name == name and cfg.task == space.task
        for key, value in trial_overrides(space, params).items():
            section, field = key.split(".")
            resolved = getattr(getattr(cfg, section), field)
            if key == "loss.seg":  # "dice+bce" is parsed into term weights
                assert set(resolved) == set(value.split("+"))
            else:
                assert resolved == value, key


def test_demo_runs_the_files_own_demo_overrides_then_command_line_overrides():
    space = load_search_space(REPO / "search_spaces" / "unet.yaml", ["sweep.num_samples=3"])
    demo = apply_demo(space, "data/demo", "ham10000")
    encoder = next(p for p in demo.parameters if p.key == "model.encoder")
    assert "resnet50" not in encoder.distribution.choices  # the file's demo: section
    assert demo.sweep.num_samples == 3  # the command line beats DEMO_OVERRIDES


def test_loading_imports_neither_torch_ray_nor_optuna():
    code = ("import sys; from derm.search_space import load_search_space; "
            "load_search_space('search_spaces/multitask.yaml'); "
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- validation errors ----------------------------------------------------------------------

MOMENTUM_WHEN_SGD = "optim: {name: {choice: [adam, sgd]}, momentum: {uniform: [0.8, 0.9], when: {optim.name: sgd}}}"
LR_RANGE = "optim: {lr: {loguniform: [1.0e-5, 1.0e-3]}}"

# case -> (YAML after "task: multitask", a fragment the error must contain)
BAD_SPACES = {
    "unknown config key": ("optim: {lrr: {loguniform: [1.0e-5, 1.0e-2]}}",
                           "optim.lrr: unknown key; did you mean lr?"),
    "unknown fixed key": ("train: {epoch: 3}", "train.epoch: unknown key"),
    "unknown section": ("sweeep: {num_samples: 3}", "sweeep: unknown key; did you mean sweep?"),
    "unknown distribution key": ("optim: {lr: {loguniform: [1.0e-5, 1.0e-2], lgo: true}}",
                                 "optim.lr: unknown key 'lgo'"),
    "unknown sweep key": ("sweep: {num_sample: 3}", "sweep.num_sample: unknown key; did you mean num_samples?"),
    "empty choice": ("model: {encoder: {choice: []}}", "model.encoder: choice needs a non-empty list"),
    "low above high": ("optim: {lr: {loguniform: [0.1, 0.001]}}", "optim.lr: low 0.1 above high 0.001"),
    "loguniform at zero": ("optim: {lr: {loguniform: [0, 0.1]}}", "optim.lr: loguniform needs low > 0"),
    "int bounds not ints": ("optim: {warmup_epochs: {int: [0, 2.5]}}",
                            "optim.warmup_epochs: int bounds must be whole"),
    "gpu fraction above 1": ("sweep: {resources: {gpu: 1.5}}", "sweep.resources.gpu: 1.5 is neither a fraction"),
    "non-positive cpu": ("sweep: {resources: {cpu: 0}}", "sweep.resources.cpu: Input should be greater than 0"),
    "unknown architecture in a choice": ("model: {arch: {choice: [Unet, Unett]}}",
                                         "model.arch: unknown architecture 'Unett'"),
    "unknown encoder in a case": ("model: {arch: {choice: [Unet, Segformer]}, encoder: {depends_on: model.arch, "
                                  "cases: {Segformer: {choice: [mit_b0, mit_b9x]}, default: resnet34}}}",
                                  "model.encoder: unknown encoder 'mit_b9x'"),
    "out of range at the high end": ("model: {head_dropout: {uniform: [0.0, 1.5]}}", "model.head_dropout:"),
    "bad when key": (MOMENTUM_WHEN_SGD.replace("when: {optim.name", "when: {optim.nam"),
                     "optim.momentum: when: optim.nam is neither a searched parameter nor a config key"),
    "when value not a choice": (MOMENTUM_WHEN_SGD.replace("name: sgd", "name: sdg"),
                                "optim.momentum: when: 'sdg' is not a value of optim.name"),
    "case not a parent value": ("model: {arch: {choice: [Unet, FPN]}, encoder: {depends_on: model.arch, "
                                "cases: {Segformr: mit_b0}}}",
                                "model.encoder: depends_on: 'Segformr' is not a value"),
    "point outside the space": (LR_RANGE + "\nsweep: {points_to_evaluate: [{optim.lr: 0.5}]}",
                                "sweep.points_to_evaluate[0]: optim.lr: 0.5 is outside the space"),
    "point names a fixed key": (LR_RANGE + "\nsweep: {points_to_evaluate: [{optim.name: sgd}]}",
                                "sweep.points_to_evaluate[0]: optim.name is fixed, not searched"),
    "point without its condition": (MOMENTUM_WHEN_SGD + "\nsweep: {points_to_evaluate: [{optim.momentum: 0.85}]}",
                                    "optim.momentum depends on optim.name: give optim.name in the point too"),
    "grid with a range": (LR_RANGE + "\nsweep: {search: grid}",
                          "sweep.search: grid needs unconditional choice parameters; optim.lr"),
    "grid with points": ("model: {encoder: {choice: [resnet18, resnet34]}}\n"
                         "sweep: {search: grid, points_to_evaluate: [{model.encoder: resnet18}]}",
                         "sweep.points_to_evaluate: grid evaluates every combination anyway"),
    "cycle": ("optim: {name: {choice: [adam, sgd], when: {optim.scheduler: cosine}}, "
              "scheduler: {choice: [cosine, step], when: {optim.name: adam}}}", "form a cycle"),
    "grace period beyond epochs": ("train: {epochs: 2}\nsweep: {grace_period: 5}",
                                   "sweep.grace_period: 5 is more than"),
    "step that does not divide": ("optim: {warmup_epochs: {int: [0, 5], step: 2}}",
                                  "optim.warmup_epochs: int range 0..5"),
    "warm-up as long as training": ("optim: {warmup_epochs: {int: [0, 3]}}\ntrain: {epochs: 3}\n"
                                    "sweep: {grace_period: 1}",
                                    "optim.warmup_epochs: 3 must be less than train.epochs (3)"),
    "when without a distribution": ("optim: {momentum: {when: {optim.name: sgd}}}",
                                    "optim.momentum: when needs a distribution"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_bad_space_gives_one_line_error_naming_file_and_key(tmp_path, case):
    text, expected = BAD_SPACES[case]
    path = write_space(tmp_path, "task: multitask\n" + text + "\n", name="bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_search_space(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_whole_gpus_and_fractions_are_accepted(tmp_path):
    for gpu in (2, 0.25, 1):
        path = write_space(tmp_path, f"optim: {{lr: {{loguniform: [1.0e-5, 1.0e-3]}}}}\n"
                                     f"sweep: {{resources: {{gpu: {gpu}, cpu: 0.5}}}}\n")
        assert load_search_space(path).sweep.resources.gpu == gpu


# --- overrides ------------------------------------------------------------------------------

def test_override_fixes_a_searched_key_and_changes_sweep_settings(tmp_path):
    path = write_space(tmp_path, GOOD)
    space = load_search_space(path, ["optim.name=adam", "sweep.num_samples=4", "train.epochs=6",
                                     "sweep.resources.gpu=0.5"])
    assert "optim.name" not in space.searched_keys
    assert space.base_config.optim.name == "adam"
    assert space.sweep.num_samples == 4
    assert space.sweep.resources.gpu == 0.5
    assert space.max_epochs == 6
    # The first point agrees with the override; the second (sgd) no longer fits and is dropped.
    assert space.seed_points == ({"model.arch": "Segformer", "model.encoder__Segformer": "mit_b1",
                                  "optim.lr": 1e-3},)
    # momentum exists only for sgd, which the override ruled out
    assert all("optim.momentum" not in params for params in random_draws(space, 10))


def test_override_can_make_a_fixed_key_searched(tmp_path):
    path = write_space(tmp_path, GOOD)
    space = load_search_space(path, ["loss.cls={choice: [ce, focal]}"])
    assert "loss.cls" in space.searched_keys


def test_bad_override_value_names_the_key(tmp_path):
    path = write_space(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"sweep\.num_samples: Input should be greater than or equal to 1"):
        load_search_space(path, ["sweep.num_samples=0"])


# --- define-by-run --------------------------------------------------------------------------

def test_define_by_run_respects_when_and_depends_on(tmp_path):
    space = load_search_space(write_space(tmp_path, GOOD))
    draws = random_draws(space, 60)
    for params in draws:
        assert ("optim.momentum" in params) == (params["optim.name"] == "sgd")
        if params["model.arch"] == "Segformer":
            assert params["model.encoder__Segformer"] in {"mit_b0", "mit_b1"}
            assert "model.encoder__default" not in params
        else:
            assert params["model.encoder__default"] in {"resnet18", "mobilenet_v2"}
            assert "model.encoder__Segformer" not in params
        assert params["optim.warmup_epochs"] in {0, 2, 4}
        assert 1e-5 <= params["optim.lr"] <= 1e-2
    assert {p["model.arch"] for p in draws} == {"Unet", "FPN", "Segformer"}
    assert {p["optim.name"] for p in draws} == {"adam", "sgd"}


def test_trial_overrides_strip_case_names_and_resolve_sets_them(tmp_path):
    space = load_search_space(write_space(tmp_path, GOOD))
    params = {"model.arch": "Segformer", "model.encoder__Segformer": "mit_b1", "optim.name": "sgd",
              "optim.lr": 1e-3, "optim.momentum": 0.9, "optim.warmup_epochs": 2}
    assert trial_overrides(space, params) == {
        "model.arch": "Segformer", "model.encoder": "mit_b1", "optim.name": "sgd", "optim.lr": 1e-3,
        "optim.momentum": 0.9, "optim.warmup_epochs": 2}
    cfg = resolve_trial_config(space, params)
    assert (cfg.model.arch, cfg.model.encoder, cfg.optim.momentum, cfg.name) == ("Segformer", "mit_b1", 0.9, "space")
    with pytest.raises(ConfigError, match="trial parameter model.decoder is not searched"):
        resolve_trial_config(space, {**params, "model.decoder": "x"})
    with pytest.raises(ConfigError, match="trial parameters lack optim.lr"):
        resolve_trial_config(space, {k: v for k, v in params.items() if k != "optim.lr"})


def test_a_case_with_a_fixed_value_is_returned_as_a_constant(tmp_path):
    path = write_space(tmp_path, """
        task: segmentation
        model:
          arch: {choice: [Unet, Segformer]}
          encoder: {depends_on: model.arch, cases: {Segformer: mit_b0, default: {choice: [resnet18, resnet34]}}}
        train: {epochs: 2}
        sweep: {grace_period: 1}
    """)
    space = load_search_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        constants = space.define_by_run(trial)
        arch = trial.params["model.arch"]
        seen.add(arch)
        if arch == "Segformer":
            assert constants == {"model.encoder": "mit_b0"}
            assert resolve_trial_config(space, trial.params).model.encoder == "mit_b0"
        else:
            assert constants is None
            assert resolve_trial_config(space, trial.params).model.encoder == trial.params["model.encoder__default"]
    assert seen == {"Unet", "Segformer"}


# --- the Ray searcher -----------------------------------------------------------------------

def test_seeded_points_come_first_then_tpe_gives_valid_configs(tmp_path):
    space = load_search_space(write_space(tmp_path, GOOD))
    searcher = build_searcher(space)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert {k: first[k] for k in ("model.arch", "model.encoder__Segformer", "optim.name", "optim.lr")} == \
        {"model.arch": "Segformer", "model.encoder__Segformer": "mit_b1", "optim.name": "adam", "optim.lr": 1e-3}
    assert "optim.warmup_epochs" in first  # not in the point: sampled
    assert {k: second[k] for k in ("model.arch", "model.encoder__default", "optim.name", "optim.momentum")} == \
        {"model.arch": "FPN", "model.encoder__default": "mobilenet_v2", "optim.name": "sgd", "optim.momentum": 0.95}
    assert 1e-5 <= second["optim.lr"] <= 1e-2
    searcher.on_trial_complete("t0", {"score": 0.4})
    searcher.on_trial_complete("t1", {"score": 0.6})
    for i in range(2, 17):  # past the TPE start-up trials
        params = searcher.suggest(f"t{i}")
        cfg = resolve_trial_config(space, params)
        assert ("optim.momentum" in params) == (cfg.optim.name == "sgd")
        assert (cfg.model.arch == "Segformer") == cfg.model.encoder.startswith("mit_")
        searcher.on_trial_complete(f"t{i}", {"score": cfg.optim.lr * 100})


def test_searcher_restore_does_not_rerun_seeded_points(tmp_path):
    space = load_search_space(write_space(tmp_path, GOOD))
    searcher = build_searcher(space)
    assert searcher.suggest("t0")["model.arch"] == "Segformer"
    searcher.on_trial_complete("t0", {"score": 0.5})
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = build_searcher(space)  # as Tuner.restore does: a fresh searcher, then restore
    restored.restore(str(tmp_path / "searcher.pkl"))
    second = restored.suggest("t1")
    assert (second["model.arch"], second["optim.name"], second["optim.momentum"]) == ("FPN", "sgd", 0.95)
    restored.on_trial_complete("t1", {"score": 0.5})
    later = [restored.suggest(f"t{i}") for i in range(2, 6)]
    assert not any(p.get("optim.momentum") == 0.95 and p.get("model.encoder__default") == "mobilenet_v2"
                   for p in later)


def test_grid_sampler_enumerates_a_choice_only_space(tmp_path):
    path = write_space(tmp_path, """
        task: segmentation
        model: {encoder: {choice: [resnet18, mobilenet_v2]}}
        optim: {name: {choice: [adam, adamw, sgd]}}
        train: {epochs: 2}
        sweep: {search: grid, grace_period: 1}
    """)
    space = load_search_space(path)
    assert space.sweep.num_samples == space.grid_size == 6  # 2 encoders x 3 optimisers
    searcher = build_searcher(space)
    seen = []
    for i in range(6):
        params = searcher.suggest(f"t{i}")
        seen.append((params["model.encoder"], params["optim.name"]))
        searcher.on_trial_complete(f"t{i}", {"score": 0.1 * i})
    assert sorted(seen) == sorted(itertools.product(["resnet18", "mobilenet_v2"], ["adam", "adamw", "sgd"]))


def test_tpe_start_up_trials_scale_with_the_budget():
    assert [tpe_startup_trials(n) for n in (1, 6, 12, 40, 100)] == [2, 2, 4, 10, 10]


def test_when_compares_fixed_values_as_written(tmp_path):
    path = write_space(tmp_path, """
        task: segmentation
        loss:
          seg: dice+bce
          attribute_pos_weight: {choice: [none, auto], when: {loss.seg: [dice+bce, bce]}}
          focal_gamma: {uniform: [1.0, 3.0], when: {loss.seg: focal+dice}}
        train: {epochs: 2}
        sweep: {grace_period: 1}
    """)
    space = load_search_space(path)
    for params in random_draws(space, 5):
        assert set(params) == {"loss.attribute_pos_weight"}
