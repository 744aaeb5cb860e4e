"""The PACS over DICOMweb (``UUSIC_DICOMWEB_URL``): search studies, list series and instances, analyse one instance
(pulled into the workspace like an upload) and store a run's SEG, SR and PDF back into its study."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request

from core.api.deps import ServiceDep, in_worker, read_json
from core.pacs import AnalyzeOrder, Pacs, StudyQuery, check_uid

router = APIRouter(tags=["pacs"])
RUN_ID = Path(..., ge=1, le=2**62, description="run id")


@router.get("/v1/pacs/studies", summary="studies in the PACS (QIDO-RS), ultrasound by default")
async def studies(request: Request, service: ServiceDep, patient_id: str | None = None,
                  patient_name: str | None = None,
                  study_date: str | None = Query(None, description="YYYYMMDD or YYYYMMDD-YYYYMMDD"),
                  accession: str | None = None, modality: str | None = "US",
                  limit: int = Query(50, ge=1, le=500)) -> dict:
    query = StudyQuery.parse({"patient_id": patient_id, "patient_name": patient_name, "study_date": study_date,
                              "accession": accession, "modality": modality or None, "limit": limit})
    found = await in_worker(request, lambda: Pacs(service.settings).search_studies(query))
    return {"count": len(found), "studies": found}


@router.get("/v1/pacs/studies/{study_uid}/series", summary="the series of a study")
async def series(request: Request, service: ServiceDep, study_uid: str) -> dict:
    study = check_uid(study_uid, "study_uid")
    return {"series": await in_worker(request, lambda: Pacs(service.settings).series(study))}


@router.get("/v1/pacs/studies/{study_uid}/series/{series_uid}/instances", summary="the instances of a series")
async def instances(request: Request, service: ServiceDep, study_uid: str, series_uid: str) -> dict:
    study, one = check_uid(study_uid, "study_uid"), check_uid(series_uid, "series_uid")
    return {"instances": await in_worker(request, lambda: Pacs(service.settings).instances(study, one))}


@router.post("/v1/pacs/analyze", summary="pull one instance, analyse it (a history run), optionally store back")
async def analyze(request: Request, service: ServiceDep) -> dict:
    from core.pacs_results import analyze_instance, find_dataset

    order = AnalyzeOrder.parse(await read_json(request))

    def work() -> dict[str, Any]:
        from core.pacs_results import dataset_for

        pacs = Pacs(service.settings)
        ref = order.model_dump(include={"study_uid", "series_uid", "sop_instance_uid"})
        if order.dataset:
            dataset = find_dataset(order.dataset)
        else:  # the rule file decides from the instance's attributes
            listed = pacs.instances(order.study_uid, order.series_uid)
            attributes = next((i for i in listed if i.get("SOPInstanceUID") == order.sop_instance_uid),
                              {"SOPInstanceUID": order.sop_instance_uid})
            dataset = dataset_for(attributes, None, service.settings.workspace)
        return analyze_instance(service, pacs, ref, dataset=dataset, store=order.store, source="api",
                                lang=order.lang)

    return await in_worker(request, work)


@router.post("/v1/pacs/store/{run_id}", summary="store a run's SEG, SR and PDF into its study (STOW-RS); "
             "send Content-Type: application/json (the body may be {})")
async def store(request: Request, service: ServiceDep, run_id: int = RUN_ID,
                lang: str = Query("en", pattern="^(en|zh)$")) -> dict:
    from core.pacs_results import store_results

    stored = await in_worker(request, lambda: store_results(service, Pacs(service.settings), run_id, lang=lang))
    return {"run_id": run_id, "stored": stored}
