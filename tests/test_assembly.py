"""One way to assemble a run's model (framework.assembly), one head type, and models that import no task."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT, compose_cfg, tiny_overrides

#: as if framework/tasks/__init__.py imported every task module: the one added import that used to make
#: `import framework.models` fail with "partially initialized module" (models -> tasks.base -> tasks/__init__
#: -> glue -> models)
EAGER_TASKS = '''
import importlib, importlib.util, sys

class EagerTasks:
    def find_spec(self, name, path=None, target=None):
        if name != "framework.tasks":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for task in ("base", "glue", "instruct", "image", "dreambooth"):
                importlib.import_module("framework.tasks." + task)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, EagerTasks())
'''


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_importing_models_loads_no_task_method_or_trainer_module():
    loaded = _python("import sys, framework.models\n"
                     "print(' '.join(sorted(m for m in sys.modules if m.startswith('framework.'))))").split()
    assert "framework.models.builder" in loaded
    assert not [m for m in loaded if m.split(".")[1] in ("tasks", "method", "trainer", "pipeline", "assembly")], loaded


def test_no_models_module_names_tasks_methods_or_the_assembly():
    """tasks -> models and method -> models are one-way: nothing in framework/models imports back."""
    paths = sorted((ROOT / "framework" / "models").glob("*.py"))
    assert len(paths) >= 5, paths
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("framework.tasks", "framework.method", "framework.assembly",
                                             "framework.pipeline", "framework.trainer")), (path.name, name)


@pytest.mark.parametrize("first,then", [("framework.models", "framework.tasks.glue"),
                                        ("framework.tasks.glue", "framework.models"),
                                        ("framework.method", "framework.tasks.instruct"),
                                        ("framework.tasks.dreambooth", "framework.assembly")])
def test_either_import_order_works_even_when_the_tasks_package_imports_every_task(first, then):
    assert _python(EAGER_TASKS + f"import {first}\nimport {then}\nprint('ok')") == "ok"


def test_one_head_type_the_task_asks_and_the_entry_places(tmp_path):
    """What a task returns and what a method receives are one type: the assembly adds the entry's modules."""
    import dataclasses

    from framework.assembly import assemble
    from framework.models import Head

    built = assemble(compose_cfg(tiny_overrides("stsb", "lora"), tmp_path), weights="meta", apply=False)
    asked = built.task.head()
    assert type(asked) is Head and asked.modules == ()
    assert built.head == dataclasses.replace(asked, modules=("classifier",))
    assert built.head.trains and built.head.model_kwargs["num_labels"] == 1 and built.adapted is None


def test_assemble_checks_what_a_run_needs_and_a_count_may_skip_it(tmp_path):
    """``check_input`` guards the run (a sequence longer than the positions); a count on a stand-in model builds."""
    from framework.assembly import assemble

    cfg = compose_cfg([o for o in tiny_overrides() if not o.startswith("task.max_length")] + ["task.max_length=512"],
                      tmp_path)
    with pytest.raises(ValueError, match="129 positions"):
        assemble(cfg, weights="meta")
    counted = assemble(cfg, weights="meta", check_input=False)
    assert counted.adapted.num_adapter_params() > 0 and counted.head.modules == ("classifier",)


def test_a_method_that_does_not_fit_fails_in_the_skeleton_check(tmp_path):
    from framework.assembly import assemble

    cfg = compose_cfg(tiny_overrides() + ["method.b=null", "method.block_size=7"], tmp_path)
    with pytest.raises(ValueError, match="block_size=7 does not fit layer"):
        assemble(cfg, weights="meta", apply=False)


def test_only_the_assembly_builds_a_run_model_and_applies_a_method():
    """pipeline, paper_tables, memory and cost assemble through framework.assembly; none repeats its steps."""
    allowed = {"framework/assembly.py", "framework/tasks/dreambooth.py"}  # DreamBooth's base model: class images
    found = []
    for path in sorted([*(ROOT / "framework").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("framework/models/") or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                    node.func.attr in ("build_model", "head_modules", "locate_head")
                    or (node.func.attr == "apply" and getattr(node.func.value, "id", "") == "method")):
                found.append(f"{rel}:{node.lineno} {node.func.attr}")
    assert not found, found
