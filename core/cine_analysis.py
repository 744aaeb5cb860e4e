"""Analysing frames of a cine (multi-frame DICOM, video) as one batch: frames chosen and budgeted by arithmetic
before any decode, each frame decoded once (edited frames stored in ``api_in/`` first), one history row per frame
under one ``batch_id``, and the loop's summary (:mod:`core.cine`).

A cine request without ``dataset_name`` is routed once, by the one route step (:mod:`core.auto_route`), on its first
analysed frame (the first chosen frame; with edits, that frame as edited): every frame goes to that dataset, each
frame's ``recognition`` says ``routed: true`` and the summary carries the route step's ``recognition``."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.analysis import Analyzer
from core.editing import parse_edits
from core.errors import ImageError
from core.response import AnalysisFailure, AnalysisResponse, BatchItem
from core.schema import PredictRequest, UnroutedRequest, parse_request

if TYPE_CHECKING:
    from core.auto_route import Routed
    from core.cine import CineResult


class FrameAnalyzer:
    """Cine analysis on top of an :class:`Analyzer` (its pool, recorder and settings)."""

    def __init__(self, analyzer: Analyzer):
        self.analyzer = analyzer
        self.settings = analyzer.settings

    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None,
                       output_dir: Path | None = None, input_dir: Path | None = None,
                       record: bool = True) -> CineResult:
        """Analyse frames of a cine (None = all), ``edits`` applied to each; a refused call (bad request, edits,
        frames, budget) is recorded as one failed run, as :meth:`Analyzer.analyze` does."""
        checked: list[dict] | None = None
        try:
            checked = parse_edits(edits) or None
            with self.analyzer.held([request]):
                return self._run(request, frames=frames, edits=checked, source=source, progress=progress,
                                 model=model, output_dir=output_dir, input_dir=input_dir, record=record)
        except Exception as exc:
            self.analyzer.recorder.refused(request, exc, source=source, edits=checked, batch_id=None,
                                           input_dir=input_dir, record=record)
            raise

    def _run(self, request: Any, *, frames: list[int] | str | None, edits: list[dict] | None, source: str,
             progress: Any, model: str | None, output_dir: Path | None, input_dir: Path | None,
             record: bool) -> CineResult:
        from core.cine import CineResult, check_budget, parse_frames, summarize
        from core.imaging import held_frames, probe_frames
        from core.paths import resolve_input

        start = time.perf_counter()
        parsed = parse_request(request)
        raw = dict(request) if isinstance(request, dict) else parsed.to_dict()
        path = resolve_input(self.settings, parsed.img_path_relative, input_dir=input_dir)
        info = probe_frames(path, settings=self.settings)
        chosen = parse_frames(frames, info.frame_count, max_frames=self.settings.max_frames)  # before any list
        # the header's size by arithmetic first; decoding then counts every frame at its real size (DecodeBudget)
        check_budget(len(chosen), info.width, info.height, self.settings.max_frames, self.settings.max_decoded_mb)
        batch = {"source": source, "progress": progress, "model": model, "record": False, "output_dir": output_dir,
                 "input_dir": input_dir}
        if edits:
            entries, missing = self._edited_frames(raw, path, chosen, edits)
            routed = self._route(parsed, entries[0], model=model, input_dir=input_dir)
            entries = _with_dataset(entries, routed)
            result = self.analyzer.analyze_batch(entries, **batch)
            entries, items = _with_missing_frames(_with_dataset([raw], routed)[0], chosen, entries, result.items,
                                                  missing)
        else:
            with held_frames(path, chosen, settings=self.settings):  # frames a video ends before fail alone
                routed = self._route(parsed, {**raw, "frame_index": chosen[0]}, model=model, input_dir=input_dir)
                entries = _with_dataset([{**raw, "frame_index": index} for index in chosen], routed)
                result = self.analyzer.analyze_batch(entries, **batch)
            items = result.items
        for index, item in zip(chosen, items, strict=True):
            item.frame_index, item.frame_count = index, info.frame_count  # type: ignore[union-attr]
        if record:
            self.analyzer.recorder.items(entries, items, source=source, edits=edits, batch_id=result.batch_id,
                                         input_dir=input_dir)
        summary = summarize(items, chosen, frame_count=info.frame_count, fps=info.fps, dataset=routed.request.dataset)
        if routed.found is not None:
            summary["recognition"] = _mark_routed(items, routed)
        return CineResult(items, summary, batch_id=result.batch_id, seconds=time.perf_counter() - start)

    def _route(self, parsed: PredictRequest | UnroutedRequest, first: dict, *, model: str | None,
               input_dir: Path | None) -> Routed:
        """The route step (:meth:`Analyzer.route`) on the first analysed frame (``first``: its request) of a request
        without a dataset (a refusal: its 422 naming ``dataset_name``); one that names its dataset as it is."""
        opened = parsed if isinstance(parsed, PredictRequest) else UnroutedRequest.parse(first)
        return self.analyzer.route(opened, input_dir=input_dir, model=model)

    def _edited_frames(self, raw: dict, path: Path, chosen: list[int],
                       edits: list) -> tuple[list[dict], ImageError | None]:
        """Each frame decoded, edited (core.editing, as the dashboard does) and stored in ``api_in/``; the requests
        name the stored frames and say where they came from (``source_path_relative``, ``source_frame_index``).
        A video that ends before frames its header promises: the frames before the end, and the end's error."""
        from core.imaging import decode_frames
        from core.samples import safe_stem

        entries: list[dict] = []
        stem = safe_stem(str(raw.get("img_name") or path.name))
        base = {k: v for k, v in raw.items() if k not in ("frame_index", "img_name", "img_dimensions",
                                                           "img_size_bytes", "img_format")}
        missing: ImageError | None = None
        try:
            for frame in decode_frames(path, chosen, settings=self.settings):
                entries.append(self._stored_frame(frame, base, stem, raw, edits))
        except ImageError as exc:
            if exc.field != "frame_index" or not entries:
                raise
            missing = exc
        order = {index: position for position, index in enumerate(chosen)}
        return sorted(entries, key=lambda entry: order[entry["source_frame_index"]]), missing

    def _stored_frame(self, frame: Any, base: dict, stem: str, raw: dict, edits: list) -> dict:
        """One decoded frame, edited within the edit budget and stored as an upload; its request."""
        from PIL import Image

        from core.editing import apply_edits, check_edit_budget
        from core.samples import save_upload

        height, width = frame.rgb.shape[:2]  # the decoded frame's own size, whatever the header said
        check_edit_budget((width, height), edits, max_pixels=self.settings.max_image_pixels,
                          max_side=self.settings.max_image_side)
        edited = apply_edits(Image.fromarray(frame.rgb), edits).convert("RGB")
        buffer = io.BytesIO()
        edited.save(buffer, format="PNG")
        skeleton = save_upload(self.settings, buffer.getvalue(), f"{stem}_f{frame.frame_index:04d}.png")
        entry = {**base, **{k: skeleton[k] for k in ("img_name", "img_path_relative", "img_size_bytes",
                                                     "img_dimensions", "img_format")},
                 "source_path_relative": raw.get("img_path_relative"), "source_frame_index": frame.frame_index}
        if not entry.get("pixel_spacing_mm") and frame.pixel_spacing_mm:  # edits keep the pixel size
            entry["pixel_spacing_mm"] = frame.pixel_spacing_mm
            entry["pixel_spacing_source"] = getattr(frame, "pixel_spacing_source", None)
        return entry


def _with_dataset(entries: list[dict], routed: Routed) -> list[dict]:
    """The frames' requests with the dataset the route step chose (as they are when the request named one)."""
    if routed.found is None:
        return entries
    return [{**entry, "dataset_name": routed.request.dataset_name} for entry in entries]


def _mark_routed(items: list[BatchItem], routed: Routed) -> dict[str, Any] | None:
    """Each frame's ``recognition`` marked ``routed: true``; the route step's own answer (the summary's)."""
    for item in items:
        if isinstance(item, AnalysisResponse) and isinstance(item.recognition, dict):
            item.recognition["routed"] = True
    found = routed.found[0] if routed.found is not None else None
    return {**found.public(), "routed": True} if found is not None else None


def _with_missing_frames(raw: dict, chosen: list[int], entries: list[dict], items: list[BatchItem],
                         missing: ImageError | None) -> tuple[list[dict], list[BatchItem]]:
    """Entries and items in ``chosen`` order, a failure (``missing``) for each frame a video ended before."""
    if missing is None:
        return entries, items
    done = {entry["source_frame_index"]: (entry, item) for entry, item in zip(entries, items, strict=True)}
    pairs = [done.get(index) or ({**raw, "frame_index": index},
                                 AnalysisFailure.from_exception({**raw, "frame_index": index}, missing))
             for index in chosen]
    return [entry for entry, _ in pairs], [item for _, item in pairs]
