"""Every config group member composes, resolves and instantiates; struct mode catches typos."""
from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose_cfg
from framework.pipeline import resolved_config

GROUPS = ("model", "method", "task", "trainer", "tracker", "paths", "debug", "recipe")


def _options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_member_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option.startswith("llama"):
        overrides.append("method.b=null")
        overrides.append("method.block_size=128")
    cfg = compose_cfg(overrides, ROOT)  # the project root: shipped data (e.g. the demo's) resolves
    required = OmegaConf.missing_keys(cfg.task)  # `???`: data the user must name (e.g. an instruction data_dir)
    assert cfg.model.name and cfg.task.name
    instantiate(cfg.tracker)
    instantiate(cfg.method, _convert_="all")
    if required:
        assert all(key.startswith(("task.data_dir", "task.test.", "task.train.")) for key in required), required
        return
    try:
        instantiate(cfg.task, _convert_="all")
    except InstantiationException as err:  # a task whose data the user must name (e.g. DreamBooth's images)
        assert "is required" in str(err.__cause__) and "task." in str(err.__cause__), err


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(compose, experiment):
    cfg = compose([f"experiment={experiment}"])
    resolved = resolved_config(cfg)
    for key in ("epochs", "batch_size", "lr_adapter", "lr_head"):
        assert isinstance(resolved["trainer"][key], (int, float)), key
    instantiate(cfg.method, _convert_="all")


def test_defaults_are_the_paper_c3a_base_setting(compose):
    cfg = compose(["task=mrpc"])
    assert cfg.model.name == "roberta-base" and cfg.method.name == "c3a" and cfg.method.b == 6
    # docs/paper.md §3, MRPC column: 80 epochs, batch 128, adapter LR 3e-1, head LR 4e-6
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (80, 128)
    assert cfg.trainer.lr_adapter == pytest.approx(0.3) and cfg.trainer.lr_head == pytest.approx(4e-6)
    assert cfg.trainer.warmup_ratio == pytest.approx(0.06) and cfg.trainer.scheduler == "linear"


def test_table2_preset_picks_the_task_row(compose):
    cfg = compose(["experiment=table2/large_c3a_b8", "task=qnli"])
    assert cfg.model.name == "roberta-large" and cfg.method.b == 8
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (30, 32)
    assert cfg.trainer.lr_adapter == pytest.approx(7e-2) and cfg.trainer.lr_head == pytest.approx(8e-6)


def test_baseline_method_brings_its_own_learning_rate(compose):
    cfg = compose(["method=lora", "task=rte"])
    assert cfg.trainer.lr_adapter < 1e-2, "LoRA must not inherit C3A's adapter LR"


@pytest.mark.parametrize("override", ["trainer.epoch=3", "method.bb=6", "task.datadir=x"])
def test_misspelt_key_is_an_error(compose, override):
    with pytest.raises(ConfigCompositionException):
        compose([override])


def test_unknown_group_option_lists_choices(compose):
    with pytest.raises(ConfigCompositionException, match="Available options"):
        compose(["method=loraa"])


def test_learning_rates_do_not_depend_on_the_order_of_the_defaults_list(tmp_path):
    """Swap task and method in the defaults list: every method keeps its own per-task learning rates."""
    import shutil

    from hydra import compose, initialize_config_dir

    swapped = tmp_path / "conf"
    shutil.copytree(CONF, swapped)
    text = (swapped / "config.yaml").read_text()
    task_line = next(line for line in text.splitlines() if line.strip().startswith("- task:"))
    method_line = next(line for line in text.splitlines() if line.strip().startswith("- method:"))
    text = text.replace(task_line, "@@TASK@@").replace(method_line, task_line).replace("@@TASK@@", method_line)
    (swapped / "config.yaml").write_text(text)

    def learning_rates(conf_dir, overrides):
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        return cfg.trainer.lr_adapter, cfg.trainer.lr_head, cfg.trainer.epochs

    for overrides in (["task=mrpc"], ["task=rte", "method=lora"], ["task=stsb", "method=vera"],
                      ["experiment=table2/large_c3a_b8", "task=qnli"]):
        assert learning_rates(CONF, overrides) == learning_rates(swapped, overrides), overrides
    assert learning_rates(swapped, ["task=mrpc"])[:2] == (pytest.approx(0.3), pytest.approx(4e-6))


TASK_CONFIGS = ROOT / "tests" / "data" / "task_configs.json"


def _raw(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)


def test_every_task_composes_to_the_config_recorded_before_the_family_bases():
    """The family bases (conf/task_family/) moved shared keys out of the task files and changed no composed
    value, key order included; task files set only ``task`` and ``trainer``, so every other node is the same
    for every task. A deliberate change to a task's defaults updates tests/data/task_configs.json with it."""
    recorded = json.loads(TASK_CONFIGS.read_text())["tasks"]
    assert sorted(recorded) == _options("task")
    others = None
    for name, nodes in recorded.items():
        raw = _raw(compose_cfg([f"task={name}"], ROOT))
        got = {"task": raw.pop("task"), "trainer": raw.pop("trainer")}
        assert json.dumps(got) == json.dumps(nodes), name  # the same values in the same order
        others = others or raw
        assert raw == others, f"task={name} changed a node other than task and trainer"


def _family_base(task_file) -> tuple[str | None, dict]:
    """The family base a task file names in its defaults list, and what the task file itself sets."""
    own = OmegaConf.to_container(OmegaConf.load(task_file), resolve=False)
    bases = [d for d in own.pop("defaults", []) if isinstance(d, str) and d.startswith("/task_family/")]
    return (bases[0] if bases else None), own


@pytest.mark.parametrize("task", _options("task"))
def test_a_task_file_holds_only_what_differs_from_its_family_base(task):
    """RTE and MRPC used to be two 17-line copies differing in 3 lines. Now a task of a family (GLUE,
    image classification, instruction) starts from its base and sets only its own values: a key it
    repeats with the base's value is a copy again. DreamBooth is a family of one: it has no base."""
    base_name, own = _family_base(CONF / "task" / f"{task}.yaml")
    if task == "dreambooth":
        assert base_name is None
        return
    assert base_name is not None, f"conf/task/{task}.yaml names no /task_family/ base in its defaults list"
    base = OmegaConf.to_container(OmegaConf.load(CONF / f"{base_name.lstrip('/')}.yaml"), resolve=False)
    for node in ("task", "trainer"):
        repeated = {k: v for k, v in own.get(node, {}).items() if k in base.get(node, {}) and base[node][k] == v}
        assert not repeated, f"conf/task/{task}.yaml repeats its base {base_name}: {node}.{repeated}"


def test_every_key_of_a_model_entry_is_read_by_something():
    """A model entry's keys are read by the code (``entry["targets"]``, ``model_cfg.get("dtype")``, ...) or by
    an interpolation in another config file (``${model.c3a...}``). ``family: roberta`` was read by nothing."""
    import re

    code = "\n".join(p.read_text() for folder in ("framework", "baselines", "scripts")
                     for p in sorted((ROOT / folder).rglob("*.py")))
    configs = "\n".join(p.read_text() for p in sorted(CONF.rglob("*.yaml")) if p.parent.name != "model")
    keys = {key for p in (CONF / "model").glob("*.yaml") for key in OmegaConf.load(p) if key != "defaults"}
    unread = sorted(k for k in keys if not re.search(rf"[\"'.]{re.escape(k)}\b(?!-)", code)
                    and not re.search(rf"\bmodel\.{re.escape(k)}\b", configs))
    assert not unread, f"model entry keys nothing reads: {unread}"
