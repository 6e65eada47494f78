"""code_version covers what a stage imports: a change in an imported module changes the stages that import it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import st_workflow

PACKAGE = Path(st_workflow.__file__).resolve().parent
NAMES = ("training", "evaluation", "ingest", "training.interpolate")


def _versions(root: Path) -> dict[str, str]:
    """code_version of each name, computed by a fresh interpreter that imports the package copy under ``root``."""
    script = (
        "import json, st_workflow\n"
        "from st_workflow.hashing import code_version\n"
        f"assert st_workflow.__file__.startswith({str(root)!r}), st_workflow.__file__\n"
        f"print(json.dumps({{n: code_version(n) for n in {NAMES!r}}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def _append(root: Path, rel: str) -> None:
    p = root / "st_workflow" / rel
    p.write_text(p.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")


def test_code_version_follows_imports(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "st_workflow", ignore=shutil.ignore_patterns("__pycache__", "data"))
    base = _versions(tmp_path)
    # Imported by the training stage (resolve_model), lives outside training/.
    _append(tmp_path, "models/resolve.py")
    after_models = _versions(tmp_path)
    assert after_models["training"] != base["training"]
    assert after_models["evaluation"] != base["evaluation"]
    assert after_models["training.interpolate"] != base["training.interpolate"]
    # In-training evaluation: imported by the trainer, outside training/.
    _append(tmp_path, "evaluation/trainer_evaluator.py")
    after_eval = _versions(tmp_path)
    assert after_eval["training"] != after_models["training"]
    # The CLI is imported by no stage: no stage's cache is invalidated by it.
    _append(tmp_path, "cli/run_cmd.py")
    assert _versions(tmp_path) == after_eval


def test_code_closure_resolves_lazy_exports_and_relative_imports(tmp_path: Path) -> None:
    from st_workflow.hashing import code_closure

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text(
        "from pkg.lazy import lazy_exports\n__getattr__ = lazy_exports(__name__, {'thing': 'impl'})\n"
    )
    (pkg / "sub" / "impl.py").write_text("from . import helper\nthing = helper.X\n")
    (pkg / "sub" / "helper.py").write_text("X = 1\n")
    (pkg / "sub" / "unused.py").write_text("Y = 2\n")
    (pkg / "lazy.py").write_text("def lazy_exports(*a): ...\n")
    (pkg / "stage.py").write_text("def run():\n    from pkg.sub import thing\n    return thing\n")
    (pkg / "worker.py").write_text("CMD = ['python', '-m', 'pkg.other']\n")
    (pkg / "other.py").write_text("")
    names = {p.relative_to(pkg).as_posix() for p in code_closure(pkg, "stage")}
    assert names == {"__init__.py", "stage.py", "sub/__init__.py", "sub/impl.py", "sub/helper.py", "lazy.py"}
    assert "other.py" in {p.relative_to(pkg).as_posix() for p in code_closure(pkg, "worker")}
