"""The source protocol: plug-ins register through the ``st_workflow.sources`` entry point group (or the registry
API) and ingest through the generic stage; no module dispatches on source config classes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from st_workflow.config.ingest import IngestConfig
from st_workflow.ingest.sources import BUILTINS, source_class, source_kinds

PACKAGE = Path(__file__).resolve().parents[2] / "st_workflow"

PLUGIN = '''
"""A third-party source: one line per document, ``title<TAB>text``."""
from typing import Any, ClassVar, Literal

from st_workflow.ingest.sources.base import TITLE_ABSTRACT, SourceBase


class LinesSource(SourceBase):
    kind: Literal["lines"] = "lines"
    path: str
    pair_type: ClassVar[str] = TITLE_ABSTRACT

    def input_identity(self, ctx: Any) -> Any:
        return [ctx.identity(p) for p in ctx.paths([self.path])]

    def feed(self, ctx: Any, sink: Any) -> None:
        path = ctx.paths([self.path])[0]
        records = (
            (dict(zip(("title", "text"), line.split("\\t"), strict=False)), f"{path.name}:{i}")
            for i, line in enumerate(path.read_text().splitlines(), 1)
        )
        ctx.stream(sink, records, self.candidate)

    def candidate(self, obj: dict, loc: str) -> Any:
        from st_workflow.ingest.documents import Candidate

        return Candidate(loc, obj.get("title"), obj.get("text"), None, {"kind": "lines"}, loc, raw=obj)


class LateSource(SourceBase):
    kind: Literal["late"] = "late"
'''

SCRIPT = """
import json, sys
from st_workflow.config import load_config
from st_workflow.config.ingest import IngestConfig, rebuild_source_union
from st_workflow.ingest import ingest_to_dir, natural_pair
from st_workflow.ingest.sources import register, source_class, source_kinds
from st_workflow.config.pairs import NaturalPairsConfig

cfg = load_config(sys.argv[1])
m = ingest_to_dir(cfg.ingest.source("mine"), sys.argv[2], ingest=cfg.ingest)
again = ingest_to_dir(cfg.ingest.source("mine"), sys.argv[2], ingest=cfg.ingest)
ptype = natural_pair({"title": "T", "text": "X", "metadata": "{}"}, "lines", NaturalPairsConfig())[0]

import lines_plugin
try:
    IngestConfig(sources=[{"kind": "late", "name": "x"}])
    before = "accepted"
except Exception:
    before = "refused"
register(lines_plugin.LateSource)
rebuild_source_union()
after = IngestConfig(sources=[{"kind": "late", "name": "x"}]).sources[0].kind
print(json.dumps({"kinds": source_kinds(), "cls": source_class("lines").__module__, "kept": m.counts["kept"],
                  "reused": again.manifest_path == m.manifest_path and again.content_hash == m.content_hash,
                  "pair_type": ptype, "before": before, "after": after}))
"""


def test_a_plugin_registers_through_the_entry_point_group_and_ingests_through_the_generic_stage(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    dist = site / "lines_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "lines_plugin.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lines-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[st_workflow.sources]\nlines = lines_plugin:LinesSource\n")
    data = tmp_path / "docs.txt"
    data.write_text(
        "Dust storms on Mars\tGlobal dust storms on Mars every few years.\n"
        "Ice on Europa\tA crust of water ice covers an ocean on Europa.\nbad line without a tab\n"
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"runs_dir: {tmp_path / 'runs'}\ningest:\n  sources:\n    - {{name: mine, kind: lines, path: '{data}'}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cfg), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kinds"][: len(BUILTINS)] == list(BUILTINS) and "lines" in got["kinds"]
    assert got["cls"] == "lines_plugin"
    assert got["kept"] == 2 and got["reused"] and got["pair_type"] == "title-abstract"
    assert got["before"] == "refused" and got["after"] == "late"


def test_builtin_kinds_come_from_the_registry() -> None:
    assert source_kinds()[: len(BUILTINS)] == list(BUILTINS)
    for kind in BUILTINS:
        cls = source_class(kind)
        assert cls is not None and cls.model_fields["kind"].default == kind
    cfg = IngestConfig(sources=[{"kind": k, "name": k, **_required(k)} for k in BUILTINS])
    assert [type(s).__name__ for s in cfg.sources] == [
        "ArxivSource",
        "CmrSource",
        "PdsSource",
        "HfSource",
        "LocalSource",
        "AdsSource",
    ]


def _required(kind: str) -> dict[str, str]:
    return {"hf": {"dataset": "x"}, "local": {"path": "x"}}.get(kind, {})


def test_no_module_dispatches_on_source_config_classes() -> None:
    classes = "|".join(cls.__name__ for cls in (source_class(k) for k in BUILTINS) if cls is not None)
    pattern = re.compile(rf"isinstance\([^)]*\b({classes})\b")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for m in pattern.finditer(text):
            own = path.parent.name == "sources" and m.group(1).lower().startswith(path.stem)
            if not own:
                offenders.append(f"{path.relative_to(PACKAGE)}: {m.group(0)}")
    assert not offenders, textwrap.indent("\n".join(offenders), "  ")


class _Recorder:
    def __init__(self) -> None:
        self.closed: list[tuple[str, str, float]] = []

    def open(self, state) -> None:
        pass

    def update(self, state) -> None:
        pass

    def close(self, state) -> None:
        self.closed.append((state.key, state.status, state.completed))


def test_the_generic_loop_reports_progress_and_reuse(tmp_path: Path) -> None:
    from st_workflow import progress
    from st_workflow.config.ingest import LocalSource
    from st_workflow.ingest import ingest_to_dir

    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"title": f"Paper {i}", "text": f"Abstract number {i} about Mars dust."}) + "\n"
            for i in range(5)
        )
    )
    rec = _Recorder()
    with progress.sinks(rec):
        ingest_to_dir(LocalSource(name="loc", path=str(path)), tmp_path / "out")
        ingest_to_dir(LocalSource(name="loc", path=str(path)), tmp_path / "out")
    assert rec.closed == [("ingest-loc", "done", 5), ("ingest-loc", "reused", 1)]
