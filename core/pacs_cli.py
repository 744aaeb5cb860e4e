"""``python -m core pacs search|pull|analyze|store|watch``: the PACS (``UUSIC_DICOMWEB_URL``) from the command line.

Every command prints JSON lines: one per study (search) or per instance (pull, analyze, watch), an instance that
fails as ``{"sop_instance_uid", "error", "error_type", "status_code"}`` (the others go on; exit status 1). A
problem before any instance (no PACS configured, the PACS down, a bad option) → ``error: ...`` on stderr, status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from core.errors import NotFoundError, UUSICError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core pacs", description="the PACS over DICOMweb")
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="find studies (QIDO-RS)")
    search.add_argument("--patient-id")
    search.add_argument("--patient-name")
    search.add_argument("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    search.add_argument("--accession")
    search.add_argument("--modality", default="US", help="modality in the study (default US; '' for any)")
    search.add_argument("--limit", type=int, default=50)
    for name, text in (("pull", "retrieve instances into the workspace (like uploads)"),
                       ("analyze", "pull and analyse instances, one history run each")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--study", required=True, help="Study Instance UID")
        command.add_argument("--series", help="Series Instance UID (default: every series of the study)")
        command.add_argument("--instance", help="SOP Instance UID (default: every image instance)")
        if name == "analyze":
            _analysis_options(command)
    sub.add_parser("demo-load", help="store demo studies made from the data root (a test PACS only)")
    store = sub.add_parser("store", help="store a recorded run's SEG, SR and PDF into its study (STOW-RS)")
    store.add_argument("--run", type=int, required=True, help="history run id")
    store.add_argument("--lang", choices=("en", "zh"), default="en", help="language of the PDF report")
    watch = sub.add_parser("watch", help="analyse new ultrasound instances and store the results back")
    watch.add_argument("--once", action="store_true", help="handle what is new, then exit")
    watch.add_argument("--since", help="only studies from this date on (YYYY-MM-DD)")
    watch.add_argument("--every", type=float, default=60.0, help="seconds between polls (default 60)")
    watch.add_argument("--no-store", action="store_true", help="analyse only; store nothing back")
    watch.add_argument("--dataset", help="task/name or name (default: the rule file <workspace>/pacs/rules.json)")
    watch.add_argument("--lang", choices=("en", "zh"), default="en")
    return parser


def _analysis_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dataset", help="task/name or name (default: the rule file <workspace>/pacs/rules.json)")
    command.add_argument("--store", action="store_true", help="store SEG, SR and PDF back into the study")
    command.add_argument("--lang", choices=("en", "zh"), default="en", help="language of the PDF report")


def _emit(line: dict) -> None:
    print(json.dumps(line, ensure_ascii=False, default=str), flush=True)


def _failure(ref: dict, exc: UUSICError) -> dict:
    return {**ref, "error": exc.message, "error_type": type(exc).__name__, "status_code": exc.status_code}


def _targets(pacs: Any, args: argparse.Namespace) -> list[dict]:
    """The image instances ``--study`` / ``--series`` / ``--instance`` name (404 when ``--instance`` is not there)."""
    from core.pacs_results import IMAGE_SOP_CLASSES

    found = [item for item in pacs.instances(args.study, args.series)
             if str(item.get("SOPClassUID", "")) in IMAGE_SOP_CLASSES or args.instance]
    if args.instance:
        found = [item for item in found if item.get("SOPInstanceUID") == args.instance]
        if not found:
            raise NotFoundError(f"instance {args.instance} is not in that study / series", field="instance")
    return found


def _per_instance(service: Any, pacs: Any, args: argparse.Namespace) -> Iterable[dict]:
    from core.pacs_results import analyze_instance, dataset_for, pull

    for item in _targets(pacs, args):
        ref = {"study_uid": item.get("StudyInstanceUID") or args.study, "series_uid": item.get("SeriesInstanceUID"),
               "sop_instance_uid": item.get("SOPInstanceUID")}
        try:
            if args.command == "pull":
                skeleton = pull(service, pacs, *ref.values())
                yield {**ref, "img_path_relative": skeleton["img_path_relative"],
                       "frame_count": skeleton.get("frame_count", 1)}
            else:
                dataset = dataset_for(item, args.dataset, service.settings.workspace)
                yield analyze_instance(service, pacs, ref, dataset=dataset, store=args.store, lang=args.lang)
        except UUSICError as exc:
            yield _failure(ref, exc)


def _run(args: argparse.Namespace) -> int:
    from core.pacs import Pacs, StudyQuery
    from core.settings import Settings

    settings = Settings.from_env()
    pacs = Pacs(settings)
    if args.command == "search":
        query = StudyQuery.parse({"patient_id": args.patient_id, "patient_name": args.patient_name,
                                  "study_date": args.date, "accession": args.accession,
                                  "modality": args.modality or None, "limit": args.limit})
        for study in pacs.search_studies(query):
            _emit(study)
        return 0
    if args.command == "demo-load":
        from core.pacs_demo import load_demo

        for study in load_demo(pacs, settings.data_root, settings.workspace):
            _emit(study)
        return 0
    from core.service import AnalysisService

    service = AnalysisService(settings)
    if args.command == "store":
        from core.pacs_results import store_results

        _emit({"run_id": args.run, "stored": store_results(service, pacs, args.run, lang=args.lang)})
        return 0
    if args.command == "watch":
        return _watch(service, pacs, args)
    failed = 0
    for line in _per_instance(service, pacs, args):
        failed += "error" in line
        _emit(line)
    return 1 if failed else 0


def _watch(service: Any, pacs: Any, args: argparse.Namespace) -> int:
    from core.pacs_watch import watch, watch_once

    options = {"dataset": args.dataset, "since": args.since, "store": not args.no_store, "lang": args.lang}
    if not args.once:
        watch(service, pacs, every_s=max(1.0, args.every), emit=_emit, **options)
    failed = 0
    for line in watch_once(service, pacs, **options):
        failed += "error" in line
        _emit(line)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
