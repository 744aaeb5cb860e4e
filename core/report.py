"""Case reports: one PDF per recorded run (fpdf2), with labels in Chinese or English.

A report holds the case (task, dataset, organ in zh + en), the analysed image, the mask overlay (segmentation) or a
probability bar chart drawn with fpdf2 rectangles (classification), the measurements with units, the pixel spacing
and its source, the uncertainty (test-time augmentation) and reference measurement when the run has them, the model's
name and sha256, the input's sha256, the run id, the dates (local and UTC) and the demo-weights disclaimer.

Chinese needs a CJK font (:data:`CJK_FONT_CANDIDATES`, e.g. ``fonts-wqy-zenhei``'s ``.ttc``). Without one the
report is written in English only and says so on its first page; it never fails for want of a font.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fpdf import FPDF
from PIL import Image

from core import catalog, i18n
from core.errors import RequestError, UUSICError
from core.history_format import local_time

log = logging.getLogger("uusic.report")

LANGS = ("zh", "en")
CJK_FONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
LATIN_FONT_CANDIDATES: tuple[Path, ...] = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),)
DISCLAIMER_EN = ("Demo weights are for demonstration, not diagnosis. This report comes from research software; it is "
                 "not a medical device and not for diagnosis or any clinical decision (see weights/MODEL_CARD.md).")
DISCLAIMER_ZH = "演示权重仅用于演示，不用于诊断。本报告由研究软件生成，不是医疗器械，不可用于诊断或任何临床决策。"
NO_CJK_NOTE = ("No CJK font is installed on this server, so this report is in English only "
               "(install fonts-wqy-zenhei for Chinese).")
MAX_IMAGE_SIDE = 1024  # pixels kept per picture in the PDF (keeps reports small)
PAGE_WIDTH = 180.0  # A4 minus 15 mm margins

LABELS: dict[str, tuple[str, str]] = {
    "title": ("超声病例报告", "Ultrasound case report"),
    "case": ("病例", "Case"), "run": ("运行编号", "Run id"), "analysed": ("分析时间", "Analysed"),
    "generated": ("报告生成", "Report generated"), "task": ("任务", "Task"), "dataset": ("数据集", "Dataset"),
    "organ": ("器官", "Organ"), "image": ("图像", "Image"), "frame": ("帧", "Frame"),
    "source": ("来源", "Source"), "images": ("图像", "Images"), "analysed_image": ("分析图像", "Analysed image"),
    "overlay": ("分割叠加", "Mask overlay"), "agreement": ("一致性图", "Agreement map"),
    "agreement_legend": i18n.STRINGS["cl_agreement_map"],  # one wording on screen and in the report
    "image_missing": ("图像已不可用", "The image is no longer available"),
    "result": ("结果", "Result"), "prediction": ("预测", "Prediction"), "probability": ("概率", "Probability"),
    "measurements": ("测量", "Measurements"), "spacing": ("像素间距", "Pixel spacing"),
    "spacing_source": ("间距来源", "spacing source"), "uncalibrated": ("未校准：仅以像素为单位",
                                                                       "not calibrated: values in px only"),
    "uncertainty": ("不确定性（测试时增强）", "Uncertainty (test-time augmentation)"),
    "views": ("视图数", "views"), "agreement_mean": ("平均掩膜一致性", "mean mask agreement"),
    "reference": ("参考测量", "Reference measurement"), "predicted": ("预测值", "predicted"),
    "reference_value": ("参考值", "reference"), "difference": ("差值", "difference"),
    "provenance": ("模型与输入", "Model and input"), "model": ("模型", "Model"),
    "model_sha256": ("模型 sha256", "Model sha256"), "input_sha256": ("输入 sha256", "Input sha256"),
    "device": ("设备", "Device"), "notes": ("备注", "Notes"), "disclaimer": ("声明", "Disclaimer"),
    "mean": ("均值", "mean"), "range": ("范围", "range"), "sd": ("标准差", "sd"),
    "components": ("连通区域数", "Connected regions"), "coverage": ("模型所见图像", "Image seen by model"),
    "target": ("分割目标", "Segmented target"),
    "unreadable": ("此部分记录无法显示：其存储的值格式不正确（可能来自导入或迁移的记录）。",
                   "This part of the record cannot be shown: its stored values are malformed (an imported or "
                   "migrated record?)."),
}
# What a malformed stored value raises while a block is written (text for a number, a list for a dict, ...).
MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError)
MEASURES: tuple[tuple[str, str, str], ...] = (  # key stem, zh, en
    ("area", "面积", "Area"),
    ("longest_diameter", "最长径", "Longest diameter"),
    ("perpendicular_diameter", "垂直径", "Perpendicular diameter"),
    ("head_circumference", "头围 HC", "Head circumference (HC)"),
    ("biparietal_diameter", "双顶径 BPD", "Biparietal diameter (BPD)"),
    ("occipitofrontal_diameter", "枕额径 OFD", "Occipitofrontal diameter (OFD)"),
)


class _Pdf(FPDF):
    """An A4 page with a footer line: what the report is, and the page number."""

    footer_text = ""
    footer_family = "helvetica"

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.footer_family, "", 7.5)
        self.set_text_color(120, 120, 120)
        self.cell(0, 5, f"{self.footer_text}  ·  {self.page_no()}/{{nb}}", align="C")


def measure_label(key: str, lang: str = "en") -> str:
    """A measurement key as people read it: ``head_circumference_mm`` → ``Head circumference (HC), mm``."""
    units = {"_px": "px", "_mm2": "mm²", "_mm": "mm"}
    for suffix, unit in units.items():
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            unit = "px²" if key == "area_px" else unit
            for known, zh, en in MEASURES:
                if known == stem:
                    return f"{zh if lang == 'zh' else en}, {unit}"
    return key


def _quiet_font_tools() -> None:
    """fontTools logs every table it cannot subset (e.g. a .ttc's bitmap tables); the PDF is fine without them."""
    for name in ("fontTools.subset", "fontTools.ttLib"):
        logging.getLogger(name).setLevel(logging.ERROR)


def find_font(candidates: tuple[Path, ...]) -> Path | None:
    """The first readable font file of ``candidates``, or None."""
    return next((path for path in candidates if path.is_file()), None)


def _format(value: Any, digits: int = 2) -> str:
    """A number as people read it (thousands separators, ``digits`` decimals); '—' for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_probability(value: float) -> str:
    """A probability as printed in the report, e.g. ``0.6234 (62.3%)``."""
    return f"{value:.4f} ({value * 100:.1f}%)"


class ReportWriter:
    """An A4 PDF in the report's language and fonts, with its writing primitives (headings, rows, paragraphs,
    tables); :class:`CaseReport` writes a run's sections with them."""

    def __init__(self, lang: str, *, needs_cjk: bool, title: str, footer: str):
        _quiet_font_tools()
        self.pdf = _Pdf(orientation="P", unit="mm", format="A4")
        self.pdf.set_margins(15, 15, 15)
        self.pdf.set_auto_page_break(True, margin=15)
        self.cjk = self._register_fonts(needs_cjk)
        self.lang = lang if (lang == "en" or self.cjk) else "en"
        self.notice = NO_CJK_NOTE if needs_cjk and not self.cjk else None
        self.pdf.set_title(title)
        self.pdf.set_creator("UUSIC Viewer")
        self.pdf.footer_family = self.family
        self.pdf.footer_text = self.text(footer)

    def _register_fonts(self, needs_cjk: bool) -> bool:
        """Register family ``body``: the CJK font when Chinese is to be printed, else a Unicode Latin font (a CJK
        face takes seconds to parse and subset), else none (the core Helvetica). True when the CJK font is in."""
        cjk = find_font(CJK_FONT_CANDIDATES) if needs_cjk else None
        self.family, self.bold = "helvetica", "B"
        for chosen in (cjk, find_font(LATIN_FONT_CANDIDATES)):
            if chosen is None:
                continue
            try:
                self.pdf.add_font("body", "", str(chosen), collection_font_number=0)  # 0: a .ttc's first face
            except Exception:  # noqa: BLE001 - a broken font file must not sink the report
                log.warning("cannot use font %s; falling back", chosen.name)
                continue
            self.family, self.bold = "body", ""  # one face only: headings are set larger, not bold
            return chosen == cjk
        return False

    # ------------------------------------------------------------------------------------------ text helpers
    def label(self, key: str) -> str:
        zh, en = LABELS[key]
        return zh if self.lang == "zh" else en

    def both(self, zh: str, en: str) -> str:
        """``zh en`` in a Chinese report (names from the catalog), ``en`` alone otherwise."""
        return f"{zh} {en}" if self.lang == "zh" and zh != en else en

    def text(self, value: str) -> str:
        if self.family == "helvetica":  # core fonts know latin-1 only
            return value.replace("—", "-").replace("–", "-").encode("latin-1", "replace").decode("latin-1")
        return value

    def font(self, size: float, bold: bool = False) -> None:
        self.pdf.set_font(self.family, self.bold if bold else "", size)

    def heading(self, key: str) -> None:
        if self.pdf.get_y() > self.pdf.h - 45:  # never a heading alone at the foot of a page
            self.pdf.add_page()
        self.pdf.ln(3)
        self.font(13, bold=True)
        self.pdf.set_text_color(20, 60, 120)
        self.pdf.cell(0, 8, self.text(self.label(key)), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_text_color(0, 0, 0)
        self.pdf.set_draw_color(20, 60, 120)
        self.pdf.line(15, self.pdf.get_y(), 15 + PAGE_WIDTH, self.pdf.get_y())
        self.pdf.ln(1.5)

    def row(self, key: str, value: str, *, key_width: float = 45, size: float = 9.5) -> None:
        self.font(size, bold=True)
        self.pdf.set_text_color(90, 90, 90)
        self.pdf.cell(key_width, 5.5, self.text(key))
        self.pdf.set_text_color(0, 0, 0)
        self.font(size)
        self.pdf.multi_cell(PAGE_WIDTH - key_width, 5.5, self.text(value), new_x="LMARGIN", new_y="NEXT")

    def paragraph(self, value: str, *, size: float = 9, color: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.font(size)
        self.pdf.set_text_color(*color)
        self.pdf.multi_cell(PAGE_WIDTH, 5, self.text(value), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_text_color(0, 0, 0)

    def table(self, header: list[str], rows: list[list[str]], widths: list[float]) -> None:
        """A bordered table; its header is repeated on each page it runs onto (and never left alone at a foot)."""
        if self.pdf.will_page_break(12):
            self.pdf.add_page()
        self._table_header(header, widths)
        for cells in rows:
            if self.pdf.will_page_break(6):
                self.pdf.add_page()
                self._table_header(header, widths)
            for text, width in zip(cells, widths, strict=True):
                self.pdf.cell(width, 6, self.text(text), border=1)
            self.pdf.ln()

    def _table_header(self, header: list[str], widths: list[float]) -> None:
        self.font(9, bold=True)
        self.pdf.set_fill_color(230, 236, 245)
        for text, width in zip(header, widths, strict=True):
            self.pdf.cell(width, 6, self.text(text), border=1, fill=True)
        self.pdf.ln()
        self.font(9)



class CaseReport(ReportWriter):
    """Writes one run's PDF; :func:`build_report` is the way in."""

    def __init__(self, backend: Any, run: dict, lang: str):
        self.backend, self.run = backend, run
        self.response: dict = run["response"] if isinstance(run.get("response"), dict) else {}
        name = f"run {run.get('id')}"
        super().__init__(lang, needs_cjk=lang == "zh" or _has_cjk(run), title=f"UUSIC case report - {name}",
                         footer=f"UUSIC Viewer - {name}")

    # ------------------------------------------------------------------------------------------ the document
    def build(self) -> bytes:
        """The PDF: every block that its stored values allow; a block they do not is replaced by a notice."""
        self.pdf.add_page()
        result = self.probability_block if self.run.get("task") == "classification" else self.measurement_block
        for block in (self.title_block, self.case_block, self.image_block, result, self.uncertainty_block,
                      self.reference_block, self.provenance_block, self.disclaimer_block):
            try:
                block()
            except MALFORMED as exc:  # a stored row from an import, a migration or an older release
                log.warning("report of run %s: %s left out (%s)", self.run.get("id"), block.__name__,
                            type(exc).__name__)
                self.pdf.set_x(self.pdf.l_margin)
                self.paragraph(self.label("unreadable"), color=(170, 90, 0))
        return bytes(self.pdf.output())

    def title_block(self) -> None:
        self.font(18, bold=True)
        self.pdf.cell(0, 10, self.text(f"UUSIC Viewer - {self.label('title')}"), new_x="LMARGIN", new_y="NEXT")
        self.paragraph(DISCLAIMER_EN if self.lang == "en" else f"{DISCLAIMER_ZH}\n{DISCLAIMER_EN}",
                       size=8.5, color=(170, 30, 30))
        if self.notice:
            self.paragraph(self.notice, size=8.5, color=(170, 90, 0))

    def case_block(self) -> None:
        run, response = self.run, self.response
        self.heading("case")
        self.row(self.label("run"), str(run.get("id")))
        zone = _zone(self.backend)
        self.row(self.label("analysed"), _dates(run.get("timestamp"), zone))
        self.row(self.label("generated"), local_time(datetime.now(UTC).isoformat(), zone))
        task = str(run.get("task") or "")
        names = catalog.TASK_NAMES.get(task, {"zh": task, "en": task})
        self.row(self.label("task"), self.both(names["zh"], names["en"]))
        self.row(self.label("dataset"), str(run.get("dataset_name") or ""))
        self.row(self.label("organ"), self._organ_name())
        request = run.get("request")
        given = request.get("original_name") if isinstance(request, dict) else None
        name = given or response.get("original_name") or run.get("img_name") or run.get("img_path_relative")
        self.row(self.label("image"), f"{name}  ({response.get('image_width')} x {response.get('image_height')} px, "
                                      f"{response.get('image_format') or '?'})")
        count, index = _frame(run)
        if count > 1:
            self.row(self.label("frame"), f"{index + 1} / {count} (frame_index {index})")
        self.row(self.label("source"), str(run.get("source") or ""))

    def _organ_name(self) -> str:
        if (dataset := _dataset(self.run)) is None:
            return str(self.run.get("organ") or "")
        group = catalog.ORGAN_GROUPS[dataset.group]
        return f"{self.both(group.zh, group.en)} ({dataset.organ})"

    def image_block(self) -> None:
        self.heading("images")
        pictures = self._pictures()
        if not pictures:
            self.paragraph(self.label("image_missing"), color=(120, 120, 120))
            return
        width = (PAGE_WIDTH - 4 * (len(pictures) - 1)) / len(pictures)
        width = min(width, 100.0)
        height = max(width * img.height / img.width for _, img in pictures)
        height = min(height, 85.0)
        if self.pdf.get_y() + height + 10 > self.pdf.h - 15:
            self.pdf.add_page()
        top = self.pdf.get_y()
        for number, (caption, image) in enumerate(pictures):
            x = 15 + number * (width + 4)
            self.font(8.5)
            self.pdf.set_xy(x, top)
            self.pdf.cell(width, 5, self.text(caption))
            self.pdf.image(image, x=x, y=top + 5.5, w=width, h=height, keep_aspect_ratio=True)
        self.pdf.set_xy(15, top + height + 7)
        if any(caption == self.label("agreement") for caption, _ in pictures):
            self.paragraph(self.label("agreement_legend"), size=8, color=(90, 90, 90))

    def _pictures(self) -> list[tuple[str, Image.Image]]:
        """(caption, image) pairs: the analysed image, the mask overlay and the agreement map when there are."""
        from core.overlay import overlay

        run_id = int(self.run["id"])
        try:
            rgb = np.asarray(self.backend.run_image(run_id))
        except (UUSICError, OSError, ValueError):
            return []
        image = _small(Image.fromarray(rgb))
        pictures = [(self.label("analysed_image"), image)]
        if self.run.get("task") != "segmentation":
            return pictures
        try:
            mask = np.asarray(self.backend.run_mask(run_id), dtype=bool)
        except (UUSICError, OSError, ValueError):
            mask = None  # purged: the image alone
        if mask is not None and mask.shape == rgb.shape[:2]:  # overlay at the printed size, not the full one
            small_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)
            pictures.append((self.label("overlay"), overlay(image.convert("RGB"), small_mask, mode="fill")))
        agreement = self._agreement_picture(image)
        if agreement is not None:
            pictures.append((self.label("agreement"), agreement))
        return pictures

    def _agreement_picture(self, picture: Image.Image) -> Image.Image | None:
        from core.overlay import agreement_view

        agreement_map = getattr(self.backend, "agreement_map", None)
        if agreement_map is None or not isinstance(self.response.get("uncertainty"), dict):
            return None
        try:
            values = np.asarray(agreement_map(self.response), dtype=np.float32)
        except (UUSICError, OSError, ValueError, KeyError, TypeError):
            return None
        return agreement_view(picture, values)  # the same colours as on screen

    def probability_block(self) -> None:
        self.heading("result")
        probability = [float(p) for p in self.response.get("probability") or []]
        names = self._class_names(len(probability))
        prediction = self.response.get("prediction")
        if prediction is not None and 0 <= int(prediction) < len(names):
            self.row(self.label("prediction"), f"{names[int(prediction)]} (class {int(prediction)})")
        uncertainty = self.response.get("uncertainty")
        uncertainty = uncertainty if isinstance(uncertainty, dict) else {}
        low = uncertainty.get("probability_min") or []
        high = uncertainty.get("probability_max") or []
        self.pdf.ln(2)
        for index, (name, value) in enumerate(zip(names, probability, strict=False)):
            span = (float(low[index]), float(high[index])) if index < min(len(low), len(high)) else None
            self._bar(name, value, highlight=index == prediction, span=span)

    def _class_names(self, count: int) -> list[str]:
        dataset = _dataset(self.run)
        if dataset is None or dataset.num_classes != count:
            names = self.response.get("class_names") or [f"class {i}" for i in range(count)]
            return [str(n) for n in names]
        return [self.both(dataset.class_name(i, "zh"), dataset.class_name(i, "en")) for i in range(count)]

    def _bar(self, name: str, value: float, *, highlight: bool, span: tuple[float, float] | None) -> None:
        """One class: its name, a bar of length ``value`` (and the TTA range as a whisker), the number."""
        pdf, top, left, full = self.pdf, self.pdf.get_y(), 15 + 55, 80.0
        self.font(9, bold=highlight)
        pdf.set_xy(15, top)
        pdf.cell(55, 7, self.text(name))
        pdf.set_fill_color(235, 235, 235)
        pdf.rect(left, top + 1.5, full, 4, style="F")
        pdf.set_fill_color(*((200, 60, 60) if highlight else (90, 130, 190)))
        pdf.rect(left, top + 1.5, max(full * min(max(value, 0.0), 1.0), 0.2), 4, style="F")
        if span is not None:
            pdf.set_draw_color(30, 30, 30)
            pdf.line(left + full * span[0], top + 3.5, left + full * span[1], top + 3.5)
            for end in span:
                pdf.line(left + full * end, top + 2.2, left + full * end, top + 4.8)
        pdf.set_xy(left + full + 3, top)
        pdf.cell(0, 7, self.text(format_probability(value)), new_x="LMARGIN", new_y="NEXT")

    def measurement_block(self) -> None:
        self.heading("measurements")
        dataset = _dataset(self.run)
        if dataset is not None and dataset.task == "segmentation":  # what every area and diameter below is of
            self.row(self.label("target"), self.both(dataset.class_name(1, "zh"), dataset.class_name(1, "en")))
        measurements = self.response.get("measurements") or {}
        rows = []
        for stem, zh, en in MEASURES:
            px_key = "area_px" if stem == "area" else f"{stem}_px"
            if px_key not in measurements:
                continue
            mm_key = "area_mm2" if stem == "area" else f"{stem}_mm"
            unit_px, unit_mm = ("px²", "mm²") if stem == "area" else ("px", "mm")
            rows.append([self.both(zh, en), f"{_format(measurements[px_key])} {unit_px}",
                         f"{_format(measurements.get(mm_key))} {unit_mm}" if measurements.get(mm_key) is not None
                         else "—"])
        self.table([self.label("measurements"), "px", "mm"], rows, [80, 50, 50])
        spacing = self.response.get("pixel_spacing_mm") or measurements.get("pixel_spacing_mm")
        source = self.response.get("pixel_spacing_source")
        self.pdf.ln(1)
        if spacing:
            self.row(self.label("spacing"), f"{float(spacing):.4f} mm/px  ({self.label('spacing_source')}: "
                                            f"{source or 'unknown'})")
        else:
            self.row(self.label("spacing"), self.label("uncalibrated"))
        if "components" in measurements:
            self.row(self.label("components"), _format(measurements["components"]))
        if self.response.get("coverage_fraction") is not None:
            self.row(self.label("coverage"), f"{float(self.response['coverage_fraction']) * 100:.1f}%")

    def uncertainty_block(self) -> None:
        uncertainty = self.response.get("uncertainty")
        if not isinstance(uncertainty, dict):
            return
        self.heading("uncertainty")
        self.row(self.label("views"), str(uncertainty.get("views")))
        if "probability_sd" in uncertainty:
            names = self._class_names(len(uncertainty.get("probability_sd") or []))
            rows = [[name, f"{float(lo):.4f} - {float(hi):.4f}", f"{float(sd):.4f}"]
                    for name, lo, hi, sd in zip(names, uncertainty.get("probability_min") or [],
                                                uncertainty.get("probability_max") or [],
                                                uncertainty["probability_sd"], strict=False)]
            self.table([self.label("probability"), self.label("range"), self.label("sd")], rows, [80, 50, 50])
        if uncertainty.get("agreement_mean") is not None:
            self.row(self.label("agreement_mean"), f"{float(uncertainty['agreement_mean']):.4f}")
        spread = uncertainty.get("measurement_spread")
        if isinstance(spread, dict) and spread:
            rows = [[measure_label(key, self.lang), _format(v.get("mean")),
                     f"{_format(v.get('min'))} - {_format(v.get('max'))}",
                     _format(v.get("sd"))] for key, v in spread.items() if isinstance(v, dict)]
            self.table(["", self.label("mean"), self.label("range"), self.label("sd")], rows, [70, 35, 45, 30])

    def reference_block(self) -> None:
        reference = self.response.get("reference")
        if not isinstance(reference, dict):
            return
        self.heading("reference")
        self.row(self.label("source"), str(reference.get("source") or ""))
        predicted = self.response.get("measurements") or {}
        values = reference.get("measurements") or {}
        difference = reference.get("difference") or {}
        keys = list(difference) or [k for k, v in values.items() if isinstance(v, (int, float))
                                    and not isinstance(v, bool)]
        rows = [[measure_label(key, self.lang), _format(predicted.get(key)), _format(values.get(key)),
                 _format(difference.get(key))] for key in keys]
        self.table(["", self.label("predicted"), self.label("reference_value"), self.label("difference")], rows,
                   [70, 37, 37, 36])

    def provenance_block(self) -> None:
        run, response = self.run, self.response
        self.heading("provenance")
        self.row(self.label("model"), str(run.get("model_name") or response.get("model_name") or ""))
        self.row(self.label("model_sha256"), str(run.get("model_sha256") or response.get("model_sha256") or "—"),
                 size=8)
        self.row(self.label("input_sha256"), str(run.get("input_sha256") or response.get("input_sha256") or "—"),
                 size=8)
        device = response.get("device_name") or response.get("device") or run.get("device")
        self.row(self.label("device"), str(device or "—"))
        notes = response.get("notes") or []
        if notes:
            self.row(self.label("notes"), "; ".join(str(n) for n in notes))

    def disclaimer_block(self) -> None:
        self.heading("disclaimer")
        if self.lang == "zh":
            self.paragraph(DISCLAIMER_ZH, color=(170, 30, 30))
        self.paragraph(DISCLAIMER_EN, color=(170, 30, 30))


def _has_cjk(value: Any) -> bool:
    """Whether any text in ``value`` (a run: names, notes...) holds CJK characters."""
    import json

    return any(ord(char) >= 0x2E80 for char in json.dumps(value, ensure_ascii=False, default=str))


def _dataset(run: dict) -> catalog.Dataset | None:
    try:
        return catalog.find_dataset(str(run.get("task") or ""), str(run.get("dataset_name") or ""))
    except catalog.UnknownDataset:
        return None


def _frame(run: dict) -> tuple[int, int]:
    """(frame count, analysed frame index) of a run: from its response, else its request (an upload's skeleton)."""
    parts = [part for part in (run.get("response"), run.get("request")) if isinstance(part, dict)]
    count = next((part["frame_count"] for part in parts if part.get("frame_count") is not None), 1)
    index = next((part["frame_index"] for part in parts if part.get("frame_index") is not None), 0)
    return int(count), int(index)


def _zone(backend: Any) -> str | None:
    """The ``timezone`` setting (UUSIC_TIMEZONE) of the service that reads the run, else of this process."""
    zone = getattr(getattr(backend, "settings", None), "timezone", None)
    if zone:
        return str(zone)
    from core.settings import get_settings

    try:
        return get_settings().timezone
    except UUSICError:
        return None


def _dates(timestamp: Any, zone: str | None = None) -> str:
    """A stored UTC ISO time in the local zone, named, with UTC once: ``2026-11-28 17:45:52 CST (UTC 09:45:52)``."""
    try:
        moment = datetime.fromisoformat(str(timestamp))
    except ValueError:
        return str(timestamp or "—")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{local_time(moment.isoformat(), zone)}  (UTC {moment.astimezone(UTC):%Y-%m-%d %H:%M:%S})"


def _small(image: Image.Image) -> Image.Image:
    """``image`` in RGB (or L) no larger than :data:`MAX_IMAGE_SIDE` on its longer side."""
    image = image if image.mode in ("RGB", "L") else image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image


def check_lang(lang: Any) -> str:
    """``lang`` when it is a report language, else a :class:`RequestError` naming the choices."""
    if lang not in LANGS:
        raise RequestError(f"report language {lang!r} is not one of {', '.join(LANGS)}", field="lang")
    return str(lang)


def build_report(backend: Any, run_id: int, lang: str = "en") -> bytes:
    """The PDF bytes of run ``run_id``'s case report; ``backend`` is the service (or its client) that reads the
    run, its image and its mask. A failed run has no result: :class:`RequestError`."""
    lang = check_lang(lang)
    run = backend.run(int(run_id))
    if run.get("error") or not isinstance(run.get("response"), dict) or not run["response"]:
        raise RequestError(f"run {run_id} failed; there is no result to report", field="run_id")
    from core.corrections import corrected_backend, correction_note

    backend, run, correction = corrected_backend(backend, run)  # a corrected run is reported as corrected
    case = CaseReport(backend, run, lang)
    case.notice = "\n".join(n for n in (case.notice, correction_note(correction)) if n) or None
    return case.build()
