"""The Analyze page's "PACS" image source (shown when ``UUSIC_DICOMWEB_URL`` is set): search studies, pick a study,
a series and an instance, and load it as the page's image (a cine opens in the frame viewer, as an upload does);
after a run on a PACS instance, one button stores its SEG, SR and PDF back into the study.

The instance is retrieved within the PACS budgets (:mod:`core.pacs`) and then handled exactly like an uploaded file
(the service's ``save_upload`` when it is analysed: same size limit, same de-identification).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core import catalog, i18n
from core.errors import UUSICError


def word(key: str, lang: str, **values: Any) -> str:
    """The PACS source's words: ``pacs_<key>`` of core/i18n.py in ``lang`` (the page's language)."""
    return i18n.t(f"pacs_{key}", lang, **values)


def _label(item: dict, *keys: str) -> str:
    return " · ".join(str(item.get(k)) for k in keys if item.get(k) not in (None, "", []))


def fetch(settings: Any, study: str, series: str, sop: str) -> bytes:
    """The bytes of one PACS instance, checked to be a readable image (typed errors otherwise)."""
    from core.pacs import Pacs
    from core.pacs_results import check_instance

    data = Pacs(settings).retrieve(study, series, sop)
    check_instance(data, sop)
    return data


def _pick(settings: Any, lang: str) -> tuple[str, str, str] | None:
    """Search form → study → series → instance; the chosen UIDs, or None."""
    from core.pacs import Pacs, StudyQuery

    with st.form("pacs_search"):
        cols = st.columns(4)
        values = {key: cols[i].text_input(word(key, lang), key=f"pacs_{key}")
                  for i, key in enumerate(("patient_id", "patient_name", "date", "accession"))}
        if st.form_submit_button(word("search", lang)):
            query = StudyQuery.parse({"patient_id": values["patient_id"] or None,
                                      "patient_name": values["patient_name"] or None,
                                      "study_date": values["date"] or None, "accession": values["accession"] or None})
            st.session_state["pacs_studies"] = Pacs(settings).search_studies(query)
    studies = st.session_state.get("pacs_studies")
    if studies is None:
        return None
    if not studies:
        st.info(word("none", lang))
        return None
    study = st.selectbox(word("study", lang), studies, key="pacs_study",
                         format_func=lambda s: _label(s, "StudyDate", "PatientID", "AccessionNumber",
                                                      "StudyDescription"))
    pacs = Pacs(settings)
    series = st.selectbox(word("series", lang), pacs.series(study["StudyInstanceUID"]), key="pacs_series",
                          format_func=lambda s: _label(s, "SeriesNumber", "Modality", "SeriesDescription"))
    if series is None:
        return None
    instances = pacs.instances(study["StudyInstanceUID"], series["SeriesInstanceUID"])
    instance = st.selectbox(word("instance", lang), instances, key="pacs_instance",
                            format_func=lambda i: _label(i, "InstanceNumber", "NumberOfFrames", "SOPInstanceUID"))
    if instance is None or not st.button(word("load", lang), key="pacs_load"):
        return None
    return study["StudyInstanceUID"], series["SeriesInstanceUID"], instance["SOPInstanceUID"]


def load_pacs(dataset: catalog.Dataset, settings: Any, lang: str, decode: Callable, set_image: Callable) -> None:
    """The PACS source: on "Load", the instance becomes the page's image like an upload (``decode``/``set_image``
    are the Analyze page's own)."""
    from pages import clinical

    try:
        chosen = _pick(settings, lang)
        if chosen is None:
            return
        data = fetch(settings, *chosen)
        picture, spacing, fmt = decode(data)
    except UUSICError as error:
        st.error(error.message)
        return
    name, token = f"pacs_{chosen[2]}.dcm", f"pacs:{chosen[2]}"
    clinical.remember_upload(data, name, token)
    set_image(token=token, name=name, picture=picture, spacing=spacing, format=fmt, source="upload", sample=None,
              task=dataset.task, dataset=dataset.name, data=data,
              pacs={"study_uid": chosen[0], "series_uid": chosen[1], "sop_instance_uid": chosen[2]})


def store_button(backend: Any, settings: Any, lang: str, image: dict, run_id: int | None) -> None:
    """After a run on a PACS instance: one button storing its results back into the study."""
    if not image.get("pacs") or not run_id or not settings.dicomweb_url:
        return
    if not hasattr(backend, "store"):  # remote mode: the API server holds the run's files
        st.caption(word("remote", lang, run=run_id))
        return
    if st.button(word("store", lang), key=f"pacs_store_{run_id}"):
        from core.pacs import Pacs
        from core.pacs_results import store_results

        try:
            stored = store_results(backend, Pacs(settings), int(run_id), lang=lang)
        except UUSICError as error:
            st.error(error.message)
            return
        st.success(word("stored", lang, n=len(stored["instances"])))
