"""The route step of a request that names no dataset (issue 25): decode its image, ask the organ recogniser, and
choose a served dataset of that organ for the request's task.

A given ``organ`` wins over the recogniser's (the dataset is then one of the given organ; the recogniser's dataset
is preferred when it is one of them), and a given ``dataset_name`` never reaches this step. No choice — the
recogniser unavailable, the image out of distribution, no served dataset of that organ and task — is a
:class:`RequestError` (422) naming ``dataset_name``. The response says ``recognition.routed: true``.

The step hands on what it decoded (:class:`Routed`): the engine prepares that image instead of decoding the file
again, so a routed request is decoded once, as one that names its dataset is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import catalog, recognition
from core.errors import RequestError
from core.routing import ModelPool
from core.schema import PredictRequest, UnroutedRequest
from core.settings import Settings

if TYPE_CHECKING:
    from core.imaging import LoadedImage



@dataclass(frozen=True)
class Routed:
    """What the route step made of a request: the typed request with its dataset, the recogniser's answer (None:
    the request named its dataset, nothing was decoded) and the decoded image (None once let go: the engine then
    decodes the file again)."""

    request: PredictRequest
    found: recognition.Found | None
    image: LoadedImage | None = None

    def without_image(self) -> Routed:
        return Routed(self.request, self.found)


def route(settings: Settings, pool: ModelPool, request: UnroutedRequest, *, input_dir: Path | None = None,
          model: str | None = None) -> Routed:
    """``request`` with the dataset chosen from its decoded image, the recogniser's answer and that image."""
    from core.imaging import load_image
    from core.paths import resolve_input

    path = resolve_input(settings, request.img_path_relative, input_dir=input_dir)
    image = load_image(path, settings=settings, frame_index=request.frame_index)
    found, seconds = recognition.timed(image.rgb, settings.weights_dir)
    return Routed(request.routed_to(choose(pool, request, found, model)), (found, seconds), image)


def choose(pool: ModelPool, request: UnroutedRequest, found: recognition.Recognition | None,
           model: str | None = None) -> catalog.Dataset:
    """The served dataset of ``request.task`` for the given organ (else the recognised one); the recogniser's
    dataset first, then the catalog's demo pick, then catalog order."""
    missing = "dataset_name is missing, so the organ recogniser chooses it"
    if found is None:
        raise RequestError(f"{missing}, but it is unavailable here; give dataset_name", field="dataset_name")
    if not found.in_distribution:
        raise RequestError(f"{missing}, but the image does not look like the ultrasound the models were trained on "
                           "(out of distribution); give dataset_name", field="dataset_name")
    organ = request.organ or found.organ
    chosen = pick(request.task, organ, found.dataset, lambda d: _served(pool, d, model))
    if chosen is None:
        seen = f"; the image looks like {found.organ} ({found.dataset})" if request.organ else ""
        raise RequestError(f"{missing}, but no model here serves a {request.task} dataset of organ {organ}{seen}; "
                           "give dataset_name", field="dataset_name")
    return chosen


def pick(task: str, organ: str, preferred: str | None, served: Callable[[catalog.Dataset], bool]
         ) -> catalog.Dataset | None:
    """The served dataset of ``task`` and ``organ`` (a catalog organ string): ``preferred`` (the recogniser's
    dataset) when it is one, else the catalog's demo pick, else the first in catalog order; None when none is
    served. The route step and the dashboard's suggestion choose the same way."""
    candidates = [d for d in catalog.datasets_for(task) if d.organ.lower() == organ.lower() and served(d)]
    ranked = sorted(candidates, key=lambda d: (d.name != preferred, not d.demo_default))
    return ranked[0] if ranked else None


def _served(pool: ModelPool, dataset: catalog.Dataset, model: str | None) -> bool:
    names = pool.served_by(dataset.task, dataset.name)
    return bool(names) and (model is None or model in names)
