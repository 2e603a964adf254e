"""The adapter (``c3a``) is a library on its own: importing and using it loads no framework package."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

FRAMEWORK_PACKAGES = ("framework", "baselines", "hydra", "omegaconf", "accelerate", "datasets", "evaluate", "wandb")

USE_THE_ADAPTER = """
import sys
import torch
from torch import nn
import c3a
from c3a import C3AConfig, add_c3a, merge_and_unload, save_c3a, load_c3a
import c3a.circulant, c3a.config, c3a.layer, c3a.adapter, c3a.peft_conversion
model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
add_c3a(model, C3AConfig(target_modules=["0", "2"], block_size=8))
model(torch.randn(4, 32)).sum().backward()
save_c3a(model, sys.argv[1])
load_c3a(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)), sys.argv[1])
merge_and_unload(model)
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in {packages})))
"""


def test_the_adapter_imports_nothing_from_the_framework(tmp_path):
    code = USE_THE_ADAPTER.replace("{packages}", repr(set(FRAMEWORK_PACKAGES)))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "adapter")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"the adapter pulled in: {proc.stdout.strip()}"


def test_no_adapter_module_names_the_framework():
    for path in sorted((ROOT / "c3a").rglob("*.py")):
        text = path.read_text()
        for package in ("framework", "baselines", "hydra", "accelerate"):
            assert f"import {package}" not in text and f"from {package}" not in text, (path, package)


def test_no_module_level_function_is_written_twice():
    """One helper per rule: a module-level function whose body (docstring aside) is the same as another's in
    framework/, baselines/, scripts/ or a test helper in tests/ is a copy (``_is_int`` stood in four modules,
    ``_results`` in three test modules: conftest.py holds the shared ones). The adapter (c3a/) keeps its own
    copies: it stands alone."""
    import ast

    copies = []
    for folders in (("framework", "baselines", "scripts"), ("tests",)):  # test helpers among themselves
        seen: dict[str, str] = {}
        for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("test_"):
                    continue
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                key = ast.dump(ast.Module(body=body, type_ignores=[]))
                where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if key in seen:
                    copies.append((seen[key], where))
                seen.setdefault(key, where)
    assert not copies, copies


def test_paper_table_specs_have_their_own_name_and_live_outside_the_outputs():
    """"experiment" is a run preset (conf/experiment/); the paper's table specs are paper_tables: the module
    framework.paper_tables reads them from paper_tables/, not from results/ (where runs write)."""
    from framework import paper_tables

    assert not (ROOT / "framework" / "experiments.py").exists()
    assert paper_tables.TABLES_DIR == ROOT / "paper_tables"
    assert sorted(p.name for p in paper_tables.TABLES_DIR.glob("*.yaml")) == [
        f"{name}.yaml" for name in paper_tables.available()]
    assert not (ROOT / "results" / "paper").exists()
    stale = [p.relative_to(ROOT).as_posix() for folder in ("framework", "scripts", "tests", "docs")
             for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".md", ".yaml")
             and p.name != "test_layout.py" and ("results/paper" in p.read_text() or "framework.experiments" in p.read_text())]
    assert not stale, f"still naming results/paper or framework.experiments: {stale}"
