"""The Analyze page's organ suggestion and result warnings (issue 25).

When an image is loaded (upload, random sample, PACS, a cine's frame) the organ recogniser is asked once, through
the service (:meth:`recognise`: in-process, or ``POST /v1/recognise`` in remote mode), what it looks like:
"Looks like: <organ> (<dataset>), confidence …", with one button that switches the organ / dataset to it (the
user's choice: the loaded image goes with it). A result whose organ disagrees with the recogniser's, or of an image
out of distribution, is shown behind a warning — never hidden: the clinician decides.
"""

from __future__ import annotations

import io
from typing import Any

import streamlit as st
from PIL import Image

from core import catalog, i18n
from core.auto_route import pick

SEND_SIDE = 1024  # the picture sent to the recogniser (it looks at a 64 x 64 thumbnail) is at most this wide
LANGS = ("zh", "en")


def recognised(image: dict, analysis: Any) -> Any:
    """The recogniser's answer (:class:`core.recognition.Recognition`) for the image on screen, asked once per
    image (a cine: per frame); None when it is unavailable or cannot be asked (the page goes on without it)."""
    cache = st.session_state.get("_recognised")
    if cache and cache["token"] == image["token"]:
        return cache["found"]
    picture: Image.Image = image["picture"].convert("RGB")
    if max(picture.size) > SEND_SIDE:
        picture = picture.copy()
        picture.thumbnail((SEND_SIDE, SEND_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    try:
        found = analysis.recognise(buffer.getvalue(), "image.png")
    except Exception:  # noqa: BLE001 - a suggestion that cannot be made is not an error of the page
        found = None
    st.session_state["_recognised"] = {"token": image["token"], "found": found}
    return found


def organ_name(organ: str, dataset_name: str, lang: str) -> str:
    """The organ in the page's language (the catalog's group of the recognised dataset), else as the model says."""
    groups = [d.group for d in catalog.DATASETS if d.name == dataset_name and d.organ == organ]
    return i18n.group_name(groups[0], lang) if groups else organ


def suggest(image: dict, dataset: catalog.Dataset, analysis: Any, served: frozenset, lang: str, *,
            caption: str) -> None:
    """The image's ``caption`` and what the image looks like (on the same line when it agrees with the chosen
    dataset: no extra height), or one button to use that organ / dataset when it is not the chosen one."""
    found = recognised(image, analysis)
    if found is None or not found.in_distribution:
        st.caption(caption)
        if found is not None:
            st.warning(i18n.t("rec_ood_image", lang), icon="⚠️")
        return
    organ = organ_name(found.organ, found.dataset, lang)
    text = i18n.t("rec_looks_like", lang, organ=organ, dataset=found.dataset, p=f"{found.confidence:.0%}")
    target = pick(dataset.task, found.organ, found.dataset, lambda d: d.key in served)
    if target is not None and target.key == dataset.key:
        st.caption(f"{caption} · {text}")
        return
    st.caption(caption)
    if target is None:
        st.info(f"{text} · {i18n.t('rec_not_served', lang, task=i18n.task_name(dataset.task, lang))}")
        return
    st.info(text, icon=":material/lightbulb:")
    st.button(i18n.t("rec_accept", lang, organ=i18n.group_name(target.group, lang), dataset=target.name),
               key="rec_accept", on_click=accept, args=(target.task, target.group, target.name),
               icon=":material/check:")


def accept(task: str, group: str, name: str) -> None:
    """The button's callback: choose ``task / group / name`` in the selectors (as the user would) and take the
    loaded image along (a sample's labels belong to its old dataset: dropped); the old result goes."""
    state = st.session_state
    state["_choice_task"] = task
    state[f"_choice_organ_{task}"] = group
    state[f"_choice_dataset_{task}_{group}"] = name
    for key in ("task", f"organ_{task}", f"dataset_{task}_{group}"):  # widgets re-made from the choices above
        for widget in (key, *(f"{key}@{lang}" for lang in LANGS)):
            state.pop(widget, None)
    image = state.get("image")
    if image:
        if (image.get("task"), image.get("dataset")) != (task, name) and image.get("sample"):
            image["sample"] = None
        image.update(task=task, dataset=name)
    state.pop("result", None)


def result_warning(response: dict, lang: str) -> None:
    """Above a result: a warning when its image is out of distribution, or looks like another organ than the one
    it was analysed as (the response's ``recognition``; nothing when the recogniser was unavailable)."""
    found = response.get("recognition")
    if not isinstance(found, dict):
        return
    if not found.get("in_distribution", True):
        st.warning(i18n.t("rec_ood_result", lang), icon="⚠️")
        return
    chosen = str(response.get("organ") or "")
    if chosen and str(found.get("organ") or "").lower() != chosen.lower():
        shown = organ_name(str(found["organ"]), str(found.get("dataset") or ""), lang)
        analysed = organ_name(chosen, str(response.get("dataset_name") or ""), lang)
        st.warning(i18n.t("rec_disagree_result", lang, organ=shown, dataset=found.get("dataset") or "—",
                          p=f"{float(found.get('confidence') or 0.0):.0%}", chosen=analysed), icon="⚠️")
