"""``st-workflow ingest {arxiv,cmr,pds,hf,local,source} ... --out DIR``: run one document source alone.

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
    st-workflow ingest source configs/demo.yaml --source cmr          # a source of a config, into its run directory
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from st_workflow.config import ConfigError, load_config
from st_workflow.config.ingest import (
    ArxivApiConfig,
    ArxivSource,
    CmrSource,
    ColumnMap,
    HfSource,
    IngestConfig,
    LocalSource,
    PdsSource,
)


def _params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if key in out:  # a repeated key becomes a list (provider=A --param provider=B)
            out[key] = [*(out[key] if isinstance(out[key], list) else [out[key]]), value]
        else:
            out[key] = value
    return out


def _columns(args: argparse.Namespace) -> ColumnMap:
    return ColumnMap(id=args.id_column, title=args.title_column, text=args.text_column, url=args.url_column)


def _ingest_config(args: argparse.Namespace) -> IngestConfig:
    if args.config:
        return load_config(args.config, args.overrides).ingest
    if args.overrides:
        return load_config(None, args.overrides).ingest
    return IngestConfig()


def _set_given(obj: Any, **given: Any) -> Any:
    """Set the fields whose command-line value was given (non-empty), keeping the model's defaults otherwise."""
    for field, value in given.items():
        if value:
            setattr(obj, field, value)
    return obj


def _source(args: argparse.Namespace) -> Any:
    common: dict[str, Any] = {"name": args.name or args.kind, "max_records": args.max_records}
    if args.kind == "arxiv":
        api = _set_given(
            ArxivApiConfig(enabled=args.api),
            base_url=args.api_url,
            search_query=args.api_query,
            max_results=args.api_max_results,
        )
        if args.min_interval is not None:  # 0 is a valid interval
            api.min_interval_s = args.min_interval
        return ArxivSource(**common, snapshot=args.snapshot or [], categories=args.category or [], api=api)
    if args.kind in ("cmr", "pds"):
        src = (CmrSource if args.kind == "cmr" else PdsSource)(
            **common,
            params=_params(args.param),
            from_file=args.from_file,
            incremental=not args.no_incremental,
        )
        if args.kind == "cmr":
            _set_given(src.token, env=args.token_env)
            return _set_given(src, base_url=args.base_url, page_size=args.page_size, client_id=args.client_id)
        return _set_given(src, base_url=args.base_url, endpoint=args.endpoint, limit=args.limit)
    if args.kind == "hf":
        return HfSource(
            **common,
            dataset=args.dataset,
            config=args.config_name,
            split=args.split,
            revision=args.revision,
            streaming=not args.no_streaming,
            columns=_columns(args),
        )
    return LocalSource(**common, path=args.path, format=args.format, columns=_columns(args))


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

    a = kinds.add_parser("arxiv", help="Kaggle arXiv snapshot (JSON Lines) and/or the export API")
    a.add_argument("--snapshot", action="append", metavar="FILE", help="snapshot file (repeatable)")
    a.add_argument("--category", action="append", metavar="PREFIX", help="keep only these category prefixes")
    a.add_argument("--api", action="store_true", help="also ask the export API for recent papers")
    a.add_argument("--api-url", metavar="URL", help="export API endpoint")
    a.add_argument("--api-query", metavar="QUERY", help="API search_query, e.g. 'cat:astro-ph*'")
    a.add_argument("--api-max-results", type=int, metavar="N", help="total API results")
    a.add_argument("--min-interval", type=float, metavar="S", help="seconds between API requests (default 3)")
    common(a)

    for kind, helptext in (("cmr", "NASA CMR collections (UMM-C)"), ("pds", "NASA PDS Search API")):
        s = kinds.add_parser(kind, help=helptext)
        s.add_argument("--base-url", metavar="URL", help="API root (CMR: https://cmr.earthdata.nasa.gov)")
        s.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="query parameter (repeatable; a repeated key becomes a list)",
        )
        s.add_argument("--from-file", metavar="FILE", help="read a recorded dump instead of the API")
        s.add_argument("--no-incremental", action="store_true", help="always fetch everything")
        if kind == "cmr":
            s.add_argument("--page-size", type=int, metavar="N", help="items per page (max 2000)")
            s.add_argument("--client-id", metavar="ID", help="Client-Id header")
            s.add_argument(
                "--token-env", metavar="VAR", help="environment variable holding an Earthdata token"
            )
        else:
            s.add_argument("--endpoint", choices=["products", "collections", "bundles"], help="product class")
            s.add_argument("--limit", type=int, metavar="N", help="items per page")
        common(s)

    def columns(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--id-column", metavar="COL", help="id column (default: a content hash)")
        sp.add_argument(
            "--title-column", default="title", metavar="COL", help="title column (default: title)"
        )
        sp.add_argument("--text-column", default="text", metavar="COL", help="text column (default: text)")
        sp.add_argument("--url-column", metavar="COL", help="URL column")

    h = kinds.add_parser("hf", help="a Hugging Face dataset (Hub id or local dataset directory)")
    h.add_argument("--dataset", required=True, metavar="ID", help="Hub id or local directory")
    h.add_argument("--config-name", metavar="NAME", help="dataset configuration")
    h.add_argument("--split", default="train", help="split (slicing allowed: train[:1000])")
    h.add_argument("--revision", metavar="REV", help="git revision to pin (makes re-runs re-usable)")
    h.add_argument("--no-streaming", action="store_true", help="download fully instead of streaming")
    columns(h)
    common(h)

    loc = kinds.add_parser("local", help="a local JSON Lines, Parquet or CSV file")
    loc.add_argument("--path", required=True, metavar="FILE", help="input file")
    loc.add_argument(
        "--format", default="auto", choices=["auto", "jsonl", "parquet", "csv"], help="file format"
    )
    columns(loc)
    common(loc)

    src = kinds.add_parser("source", help="one source of a config (default output: its run directory)")
    src.add_argument("config", metavar="CONFIG", help="YAML config")
    src.add_argument("--source", required=True, metavar="NAME", help="ingest source name")
    common(src, out_required=False, config_flag=False)
