"""``st-workflow ingest {arxiv,cmr,pds,hf,local,ads,<plug-in>,source} ... --out DIR``: run one source alone.

The command builds the same source config the pipeline would and calls the same function the Prefect task calls
(:func:`st_workflow.ingest.ingest_to_dir`), so what it writes — ``DIR/documents.parquet``, ``DIR/quarantine.jsonl``,
``DIR/manifest.json`` with the kept, quarantined and duplicate counts — is exactly what a flow run writes. Re-running
it re-uses the output (file sources) or asks only for what changed (live APIs).

Examples::

    st-workflow ingest arxiv --snapshot data/raw/arxiv-metadata-oai-snapshot.json --category astro-ph --out out/arxiv
    st-workflow ingest cmr --base-url https://cmr.earthdata.nasa.gov --param provider=PODAAC --param cloud_hosted=true --out out/cmr
    st-workflow ingest pds --endpoint collections --param 'q=(pds:Target_Identification.pds:name eq "Mars")' --out out/pds
    st-workflow ingest hf --dataset sentence-transformers/s2orc --config-name title-abstract-pair --split 'train[:1000]' \\
        --title-column title --text-column abstract --out out/s2orc
    st-workflow ingest local --path docs.jsonl --out out/local
    ADS_API_TOKEN=... st-workflow ingest ads --q 'abs:"exoplanet atmosphere"' --fq property:refereed --out out/ads
    st-workflow ingest source configs/demo.yaml --source cmr          # a source of a config, into its run directory
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from st_workflow.config import ConfigError, load_config
from st_workflow.config.ingest import IngestConfig
from st_workflow.ingest.sources import source_class, source_classes, source_kinds


def _ingest_config(args: argparse.Namespace) -> IngestConfig:
    if args.config:
        return load_config(args.config, args.overrides).ingest
    if args.overrides:
        return load_config(None, args.overrides).ingest
    return IngestConfig()


def _source(args: argparse.Namespace) -> Any:
    """The source config the command line describes, built by the kind's own class."""
    cls = source_class(args.kind)
    assert cls is not None  # the sub-command exists only for registered kinds
    return cls.from_cli(args, {"name": args.name or args.kind, "max_records": args.max_records})


def _report(m: Any, as_json: bool) -> None:
    if as_json:
        print(m.model_dump_json(indent=2, by_alias=True))
        return
    c = m.counts
    print(
        f"{m.name}: kept {c.get('kept', 0)}, quarantined {c.get('quarantined', 0)}, duplicates {c.get('duplicates', 0)}, "
        f"filtered {c.get('filtered', 0)} of {c.get('seen', 0)} records"
    )
    print(f"  documents  {m.path('documents')}")
    print(f"  quarantine {m.path('quarantine')}")
    print(f"  manifest   {m.manifest_path}")


def _run(args: argparse.Namespace) -> int:
    from st_workflow.ingest import ingest_source, ingest_to_dir
    from st_workflow.runtime import apply_config_env

    try:
        if args.kind == "source":
            cfg = load_config(args.config, args.overrides)
            apply_config_env(cfg)
            if args.out:
                m = ingest_to_dir(
                    cfg.ingest.source(args.source),
                    args.out,
                    ingest=cfg.ingest,
                    full_refresh=args.full_refresh,
                )
            else:
                m = ingest_source(cfg, args.source, full_refresh=args.full_refresh)
        else:
            m = ingest_to_dir(
                _source(args), Path(args.out), ingest=_ingest_config(args), full_refresh=args.full_refresh
            )
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"ingest error: {e}", file=sys.stderr)
        return 1
    _report(m, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="ingest one document source into DIR (documents.parquet, quarantine.jsonl, manifest.json)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="kind", metavar="SOURCE")
    kinds.required = True

    def common(sp: argparse.ArgumentParser, out_required: bool = True, config_flag: bool = True) -> None:
        sp.add_argument(
            "--out", required=out_required, metavar="DIR", help="output directory (created or replaced)"
        )
        sp.add_argument("--name", help="source name written into every document (default: the kind)")
        sp.add_argument("--max-records", type=int, metavar="N", help="stop after N kept records")
        sp.add_argument(
            "--full-refresh", action="store_true", help="ignore the re-use key and incremental state"
        )
        sp.add_argument("--json", action="store_true", help="print the manifest as JSON")
        if config_flag:
            sp.add_argument(
                "--config", metavar="CONFIG", help="take the record bounds (ingest.*) from this config"
            )
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="config override, e.g. --set ingest.min_text_chars=50 (repeatable)",
        )
        sp.set_defaults(func=_run)

    classes = source_classes()
    for kind in source_kinds():  # every registered source, plug-ins included
        cls = classes[kind]
        sp = kinds.add_parser(kind, help=cls.cli_help or (cls.__doc__ or kind).strip().splitlines()[0])
        cls.add_cli_arguments(sp)
        common(sp)

    src = kinds.add_parser("source", help="one source of a config (default output: its run directory)")
    src.add_argument("config", metavar="CONFIG", help="YAML config")
    src.add_argument("--source", required=True, metavar="NAME", help="ingest source name")
    common(src, out_required=False, config_flag=False)
