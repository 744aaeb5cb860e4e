"""Reading what was recorded: runs, their CSV, and the files a run owns (image, mask, agreement map).

This is the data that reports (:mod:`core.report`) and the DICOM SEG (:mod:`core.dicom_seg`) are built from: they
receive a :class:`RunReader`, never the whole service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import NotFoundError, PathError
from core.recorder import Recorder
from core.response import AnalysisResponse
from core.settings import Settings


class RunReader:
    """Recorded runs of one settings' history and the workspace files they name."""

    def __init__(self, settings: Settings, recorder: Recorder):
        self.settings = settings
        self._recorder = recorder

    def runs(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]:
        """Recorded runs, newest first (filters as :meth:`core.history.HistoryStore.list`)."""
        return self._recorder.store.list(filters, limit=limit)

    def run(self, run_id: int) -> dict:
        """One recorded run (JSON columns decoded); :class:`NotFoundError` when there is none."""
        from core.history import decode_row

        row = self._recorder.store.get(run_id)
        if row is None:
            raise NotFoundError(f"no run {run_id} in the history", field="run_id")
        return decode_row(row)

    def runs_csv(self, filters: dict | None = None, limit: int = 10000) -> str:
        """The runs as the machine-readable CSV (:func:`core.runs_table.history_csv`)."""
        from core.runs_table import history_csv

        return history_csv(self.runs(filters, limit=limit))

    def mask_png(self, response: AnalysisResponse | dict) -> bytes:
        """The PNG bytes of a segmentation response's mask (it must lie under ``api_out/``)."""
        path = response.get("mask_path") if isinstance(response, dict) else response.mask_path
        return workspace_file(path, Path(self.settings.api_out), "mask").read_bytes()

    def run_image(self, run_id: int) -> np.ndarray:
        """The analysed image of a run (RGB, through the project's image loader; a cine: the run's frame)."""
        from core.imaging import load_image
        from core.paths import resolve_input

        row = self.run(run_id)
        rel = row.get("img_path_relative")
        frame = (row.get("request") or {}).get("frame_index") if isinstance(row.get("request"), dict) else None
        if not rel:
            raise NotFoundError(f"run {run_id} names no image", field="run_id")
        try:
            path = resolve_input(self.settings, str(rel))
        except PathError as exc:
            raise NotFoundError(f"the image of run {run_id} is no longer available ({exc.message})",
                                field="run_id") from None
        return load_image(path, settings=self.settings, frame_index=frame).rgb

    def run_mask(self, run_id: int) -> np.ndarray:
        """The predicted mask of a segmentation run, as a boolean array at the image's size."""
        from core.imaging import load_image

        path = workspace_file(self.run(run_id).get("mask_path"), Path(self.settings.api_out), "mask")
        return load_image(path, settings=self.settings).rgb[..., 0] > 127

    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray:
        """The TTA agreement map of a segmentation response: float32 ``H x W`` in 0..1 (fraction of the views
        voting foreground); :class:`NotFoundError` when the response has none (analysed without TTA)."""
        from core.imaging import load_image

        data = response if isinstance(response, dict) else response.to_json()
        path = (data.get("uncertainty") or {}).get("agreement_path")
        if not path:
            raise NotFoundError("this result has no agreement map (it was analysed without test-time augmentation)")
        target = workspace_file(path, Path(self.settings.api_out), "agreement map")
        return load_image(target, settings=self.settings).rgb[..., 0].astype(np.float32) / 255.0


def workspace_file(path: Any, root: Path, what: str) -> Path:
    """The existing file ``path`` under ``root``; NotFound / PathError naming ``what`` (never the path)."""
    if not path:
        raise NotFoundError(f"this run has no {what} file")
    target = Path(str(path)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PathError(f"the {what} file of this run is outside the workspace")
    if not target.is_file():
        raise NotFoundError(f"the {what} file of this run is no longer available")
    return target
