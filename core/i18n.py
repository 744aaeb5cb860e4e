"""Dashboard strings in Chinese and English.

Task, organ, dataset and class names are not repeated here: they come from :mod:`core.catalog`.
"""

from __future__ import annotations

from core import catalog

LANGUAGES = ("zh", "en")

STRINGS: dict[str, tuple[str, str]] = {
    # app frame
    "app_title": ("UUSIC 超声智能分析", "UUSIC Ultrasound Viewer"),
    "language": ("语言 / Language", "Language / 语言"),
    "demo_banner": (
        "演示权重仅用于演示，不可用于临床诊断。",
        "Demo weights are for demonstration only, not for diagnosis.",
    ),
    "login_title": ("请登录", "Please sign in"),
    "login_password": ("密码", "Password"),
    "login_button": ("登录", "Sign in"),
    "login_wrong": ("密码错误。", "Wrong password."),
    "login_oidc": ("使用机构账号登录", "Sign in with your institution account"),
    "logout": ("退出登录", "Sign out"),
    "login_wait": ("错误次数过多，请 {s} 秒后再试。", "Too many wrong attempts: try again in {s} s."),
    "login_config_error": (
        "登录配置无效，仪表盘在修正前不提供服务：{message}",
        "The login configuration is invalid, so the dashboard serves nothing until it is fixed: {message}",
    ),
    "login_config_warning": ("登录配置警告：{message}", "Login configuration warning: {message}"),
    "nav_analyze": ("分析", "Analyze"),
    "nav_history": ("历史记录", "History"),
    "nav_batch": ("批量处理", "Batch"),
    "nav_models": ("模型与系统", "Models & System"),
    "backend_local": ("推理：本进程", "Inference: in-process"),
    "backend_remote": ("推理：远程 API {url}", "Inference: remote API {url}"),
    # analyze: selection
    "task": ("任务", "Task"),
    "organ": ("器官", "Organ"),
    "dataset": ("数据集", "Dataset"),
    "no_model": (
        "当前模型不支持该数据集（{dataset}）：没有可用模型，不会给出结果。",
        "No model for this dataset ({dataset}): the current model does not serve it, so no result is given.",
    ),
    "source": ("图像来源", "Image source"),
    "source_upload": ("上传图像", "Upload an image"),
    "source_sample": ("随机样本", "Random sample"),
    "upload_label": (
        "选择超声图像（PNG、JPEG、BMP、TIFF、DICOM）", "Choose an ultrasound image (PNG, JPEG, BMP, TIFF, DICOM)",
    ),
    "random_button": ("随机抽取样本", "Draw a random sample"),
    "no_samples": (
        "数据目录中没有数据集 {dataset} 的图像。请换一个数据集或上传图像。",
        "The data folder has no images for dataset {dataset}. Pick another dataset or upload an image.",
    ),
    "image_error": ("无法读取该图像：{message}", "This image cannot be read: {message}"),
    "pick_image": ("请上传图像或抽取随机样本。", "Upload an image or draw a random sample."),
    "current_image": ("当前图像：{name}（{w}×{h}）", "Current image: {name} ({w}×{h})"),
    # analyze: edit
    "edit": ("编辑", "Edit"),
    "rotate90": ("旋转（90° 步进）", "Rotate (90° steps)"),
    "free_angle": ("任意角度（°）", "Free angle (°)"),
    "flip_h": ("水平翻转", "Flip ↔"),
    "flip_v": ("垂直翻转", "Flip ↕"),
    "crop": ("裁剪", "Crop"),
    "crop_help": (
        "拖动方框选择区域；旋转后方框会重置。", "Drag the box to choose a region; it resets when the rotation changes.",
    ),
    "reset_edits": ("重置编辑", "Reset edits"),
    "edited_size": ("编辑后尺寸：{w}×{h}", "Edited size: {w}×{h}"),
    "zoom_help": ("滚轮缩放、拖动平移。", "Scroll to zoom, drag to pan."),
    # analyze: run
    "run": ("运行分析", "Run analysis"),
    "running": ("正在推理…", "Running inference…"),
    "request_json": ("请求 JSON", "Request JSON"),
    "response_json": ("原始响应 JSON", "Raw response JSON"),
    "request_error": ("请求无效：{message}", "Invalid request: {message}"),
    "engine_error": ("推理失败：{message}", "Inference failed: {message}"),
    "weights_error": ("模型权重无法加载：{message}", "The model weights cannot be loaded: {message}"),
    "api_error": ("推理服务出错：{message}", "The inference service failed: {message}"),
    # results
    "result": ("结果", "Result"),
    "model_pick": ("模型", "Model"),
    "model_auto": ("自动（按数据集）", "automatic (by dataset)"),
    "compare_with": ("对比模型", "Compare with"),
    "compare_none": ("不对比", "no comparison"),
    "comparison": ("模型对比", "Model comparison"),
    "compare_agreement": ("两个模型掩膜的 Dice 一致性", "Dice agreement of the two models' masks"),
    "probability": ("概率", "Probability"),
    "class": ("类别", "Class"),
    "prediction": ("预测：{label}（{p:.1%}）", "Prediction: {label} ({p:.1%})"),
    "opacity": ("叠加透明度", "Overlay opacity"),
    "display_mode": ("显示方式", "Display"),
    "mode_fill": ("填充", "Fill"),
    "mode_contour": ("轮廓", "Contour"),
    "original": ("原图（编辑后）", "Original (edited)"),
    "overlay": ("分割叠加", "Segmentation overlay"),
    "measurements": ("测量", "Measurements"),
    "measure_name": ("项目", "Measure"),
    "measure_value": ("数值", "Value"),
    "empty_mask": ("模型未分割出目标区域。", "The model found no target region."),
    "download_mask": ("下载掩膜 PNG", "Download mask PNG"),
    "download_overlay": ("下载叠加图 PNG", "Download overlay PNG"),
    "ground_truth": ("标注（演示模式）", "Ground truth (demo mode)"),
    "gt_label": ("标注类别：{label}", "Reference label: {label}"),
    "gt_correct": ("预测正确", "Prediction correct"),
    "gt_wrong": ("预测错误", "Prediction wrong"),
    "dice": ("Dice 系数：{dice:.3f}", "Dice: {dice:.3f}"),
    "gt_mask": ("标注掩膜", "Reference mask"),
    # resources
    "resources": ("资源占用", "Resources"),
    "inference_time": ("推理时间", "Inference time"),
    "rss": ("进程内存 (RSS)", "Process memory (RSS)"),
    "gpu_used": ("GPU 显存（已用）", "GPU memory (used)"),
    "gpu_reserved": ("GPU 显存（保留）", "GPU memory (reserved)"),
    "device": ("设备", "Device"),
    "cpu_only": ("CPU（无 GPU）", "CPU (no GPU)"),
    "run_id": ("记录 #{n}", "run #{n}"),
    "system": ("系统状态", "System"),
    "cpu_percent": ("CPU 使用率", "CPU use"),
    "ram": ("内存", "RAM"),
    "gpu_util": ("GPU 利用率", "GPU utilisation"),
    "gpu_mem": ("GPU 显存", "GPU memory"),
    # history
    "history_empty": ("还没有记录。", "No runs recorded yet."),
    "filter_task": ("按任务筛选", "Filter by task"),
    "filter_dataset": ("按数据集筛选", "Filter by dataset"),
    "filter_organ": ("按器官筛选", "Filter by organ"),
    "filter_name": ("图像名包含", "Image name contains"),
    "all": ("全部", "All"),
    "rows": ("共 {n} 条记录", "{n} rows"),
    "download_csv": ("导出 CSV", "Export CSV"),
    "reopen": ("重新打开记录", "Re-open a run"),
    "reopen_unavailable": ("无法重新打开该记录：{message}", "This run cannot be re-opened: {message}"),
    "run_failed": ("该记录是一次失败的分析（不重新打开其文件）：", "This run failed (its file is not re-opened):"),
    # batch
    "batch_source": ("批量来源", "Batch source"),
    "batch_uploads": ("上传多张图像", "Upload several images"),
    "batch_json": ("挑战赛 JSON（数据根目录）", "Challenge JSON (data root)"),
    "batch_json_file": ("数据根目录中的 JSON 文件", "JSON file under the data root"),
    "batch_json_upload": ("或上传 JSON 文件（图像路径相对于数据根目录）",
                          "…or upload a JSON file (image paths relative to the data root)"),
    "batch_json_none": ("数据根目录中没有 JSON 文件，请上传一个。", "No JSON file under the data root: upload one."),
    "batch_run": ("批量运行", "Run batch"),
    "batch_done": ("完成 {n} 张图像，用时 {sec:.1f} 秒", "{n} images done in {sec:.1f} s"),
    "batch_zip": ("下载结果 ZIP（classification.json + 掩膜）", "Download results ZIP (classification.json + masks)"),
    "batch_metrics": ("评估指标（有标注时）", "Metrics (where ground truth exists)"),
    "batch_no_files": ("请先选择图像。", "Choose images first."),
    "batch_json_error": ("无法读取 JSON：{message}", "Cannot read the JSON: {message}"),
    "batch_skipped": ("{n} 条请求因无模型被跳过：{names}", "{n} requests skipped (no model): {names}"),
    "batch_metrics_remote": ("远程模式下不计算评估指标（掩膜在 API 服务器上）。",
                             "Metrics are not computed in remote mode (the masks live on the API server)."),
    # models & system
    "manifest": ("模型清单", "Model manifest"),
    "model_info": ("当前模型", "Current model"),
    "versions": ("软件版本", "Versions"),
    "paths": ("工作目录", "Paths"),
    "model_card": ("模型卡", "Model card"),
    "no_manifest": ("没有找到模型清单：{path}", "No model manifest found: {path}"),
    # analyze (issue 11, pages/clinical.py): cine, calibration, uncertainty, reference, report
    "cl_container_error": ("无法保留原始文件（动态序列 / DICOM）：{message}",
                           "The original file (cine loop / DICOM) cannot be kept: {message}"),
    "cl_cine_title": ("动态序列", "Cine loop"),
    "cl_cine_info": ("共 {n} 帧 · 帧率 {fps} 帧/秒", "{n} frames · {fps} frames/s"),
    "cl_frame": ("帧", "Frame"),
    "cl_frame_n": ("第 {k} 帧", "frame {k}"),
    "cl_frame_of": ("第 {k} 帧 / 共 {n} 帧", "frame {k} of {n}"),
    "cl_play": ("播放", "Play"),
    "cl_this_frame": ("“运行分析”分析当前显示的第 {k} 帧（共 {n} 帧）。",
                      "“Run analysis” analyses the frame shown: frame {k} of {n}."),
    "cl_frame_error": ("无法显示：{message}", "Cannot be shown: {message}"),
    "cl_analyze_all": ("分析全部 {n} 帧", "Analyse all {n} frames"),
    "cl_frames_progress": ("正在分析第 {done} / {n} 帧…", "Analysing frames: {done} of {n}…"),
    "cl_frames_missing": ("逐帧分析", "frame-by-frame analysis"),
    "cl_frames_stale": ("编辑已更改：下方曲线来自之前的编辑，请重新分析全部帧。",
                        "The edits changed: the curve below is from the earlier edits; analyse all frames again."),
    "cl_frames_result": ("全部帧结果（{n} 帧）", "All frames ({n})"),
    "cl_frames_failed": ("{n} 帧分析失败，例如：{message}", "{n} frames failed, e.g.: {message}"),
    "cl_area": ("面积（{unit}）", "Area ({unit})"),
    "cl_largest": ("最大帧", "Largest"),
    "cl_smallest": ("最小帧", "Smallest"),
    "cl_ed": ("舒张末期 (ED) 候选", "End-diastole (ED) candidate"),
    "cl_es": ("收缩末期 (ES) 候选", "End-systole (ES) candidate"),
    "cl_fac": ("面积变化分数 (FAC)", "Fractional area change (FAC)"),
    "cl_calibration": ("像素间距（校准）", "Pixel spacing (calibration)"),
    "cl_auto_spacing": ("图像自带：{text}", "From the image: {text}"),
    "cl_spacing_mode": ("间距来源", "Spacing from"),
    "cl_mode_auto": ("自动（DICOM / 标注）", "automatic (DICOM / ground truth)"),
    "cl_mode_user": ("输入 mm/像素", "enter mm/px"),
    "cl_mode_line": ("画已知长度的线", "draw a line of known length"),
    "cl_mode_none": ("不用（仅像素）", "none (pixels only)"),
    "cl_enter_spacing": ("像素间距（mm/像素）", "Pixel spacing (mm/px)"),
    "cl_spacing_error": ("像素间距不合理：{message}", "Implausible pixel spacing: {message}"),
    "cl_spacing_used": ("测量使用的像素间距：{text}", "Spacing used for measurements: {text}"),
    "cl_spacing_value": ("{spacing} mm/像素（来源：{source}）", "{spacing} mm/px (source: {source})"),
    "cl_spacing_none": ("无像素间距：测量仅以像素为单位（可在“像素间距（校准）”中设置）。",
                        "No pixel spacing: measurements in pixels only (set one under “Pixel spacing (calibration)”)."),
    "cl_mm_note": ("毫米值按 {text} 计算", "mm values at {text}"),
    "cl_source_dicom": ("DICOM", "DICOM"),
    "cl_source_dicom_region": ("DICOM 超声区域", "DICOM ultrasound region"),
    "cl_source_user": ("用户输入", "entered by the user"),
    "cl_source_line": ("画线校准", "drawn line"),
    "cl_source_ground_truth": ("标注数据", "ground truth"),
    "cl_source_unknown": ("未知", "unknown"),
    "cl_line_help": ("在图像上点击两点（例如深度标尺上的两个刻度），再输入两点间的实际距离。",
                     "Click two points on the image (e.g. two marks of the depth ruler), then enter their distance."),
    "cl_line_length": ("两点间距离（mm）", "Distance between the points (mm)"),
    "cl_line_reset": ("清除点", "Clear points"),
    "cl_line_points": ("已选 {n} / 2 个点。", "{n} of 2 points chosen."),
    "cl_line_result": ("线长 {px} 像素 = {mm} mm → {spacing} mm/像素", "Line {px} px = {mm} mm → {spacing} mm/px"),
    "cl_unavailable": ("此功能暂不可用：{message}", "Not available here: {message}"),
    "cl_tta": ("测试时增强 (TTA)：报告不确定性", "Test-time augmentation (TTA): report the uncertainty"),
    "cl_tta_help": ("对翻转、小角度旋转后的多个视图取平均，并给出概率范围、掩膜一致性和测量离散度（更慢）。",
                    "Averages flipped and slightly rotated views and reports the probability range, mask agreement "
                    "and measurement spread (slower)."),
    "cl_uncertainty": ("不确定性（TTA，{n} 个视图）", "Uncertainty (TTA, {n} views)"),
    "cl_tta_bars": ("柱高为各视图平均概率，误差线为最小-最大范围。",
                    "Bars: the mean probability over the views; error bars: their min-max range."),
    "cl_agreement": ("掩膜平均一致性", "Mean mask agreement"),
    "cl_agreement_map": ("一致性图：橙色为各视图不一致处，蓝色为多数视图判为目标处",
                         "Agreement map: orange where the views disagree, blue where most views found the target"),
    "cl_stat_mean": ("平均", "mean"),
    "cl_stat_min": ("最小", "min"),
    "cl_stat_max": ("最大", "max"),
    "cl_stat_sd": ("标准差", "SD"),
    "cl_reference_title": ("参考测量（演示模式）", "Reference measurement (demo mode)"),
    "cl_predicted": ("预测", "Predicted"),
    "cl_reference": ("参考", "Reference"),
    "cl_difference": ("差值（预测 − 参考）", "Difference (predicted − reference)"),
    "cl_ref_ground_truth_mask": ("参考：标注掩膜", "Reference: ground-truth mask"),
    "cl_ref_ground_truth_json": ("参考：ground_truth.json 中的头围", "Reference: HC from ground_truth.json"),
    "cl_ref_ground_truth_mask_edited": ("参考：经相同编辑的标注掩膜",
                                        "Reference: ground-truth mask after the same edits"),
    "cl_ref_None": ("参考：标注", "Reference: ground truth"),
    "cl_report_pdf": ("报告 (PDF)", "Report (PDF)"),
    "cl_report_missing": ("PDF 报告", "PDF report"),
    "cl_dicom_seg": ("DICOM SEG（掩膜）", "DICOM SEG (mask)"),
    "cl_seg_unavailable": ("无法生成 DICOM SEG：{message}", "No DICOM SEG for this run: {message}"),
    # analyze (issue 12): served marks, provenance, stale results, legend, timing
    "no_model_mark": ("· 无模型", "· no model"),
    "image_error_named": ("无法读取 {name}：{message}", "{name} cannot be read: {message}"),
    "stale_result": (
        "⚠️ 以下结果已过期：{changes} 在运行后已更改。请再次点击“运行分析”。",
        "⚠️ This result is out of date: the {changes} changed after it was computed. Click “Run analysis” again.",
    ),
    "changed_edits": ("编辑", "edits"),
    "changed_model": ("模型", "model"),
    "changed_image": ("图像", "image"),
    "changed_dataset": ("数据集", "dataset"),
    "provenance": (
        "任务：{task} · 器官：{organ} · 数据集：{dataset} · 模型：{model} · 图像：{image} · 编辑：{edits}",
        "Task: {task} · Organ: {organ} · Dataset: {dataset} · Model: {model} · Image: {image} · Edits: {edits}",
    ),
    "edits_none": ("无", "none"),
    "edit_rotate90": ("旋转 {deg}°", "rotated {deg}°"),
    "edit_rotate": ("任意旋转 {deg}°", "free rotation {deg}°"),
    "edit_flip_horizontal": ("水平翻转", "flipped left–right"),
    "edit_flip_vertical": ("垂直翻转", "flipped top–bottom"),
    "edit_crop": ("裁剪 {w}×{h}", "cropped to {w}×{h}"),
    "click_to_result": ("点击到结果", "Click → result"),
    "legend_prediction": ("模型预测", "Model prediction"),
    "legend_reference": ("标注（参考）", "Ground truth (reference)"),
    "legend_title": ("图例", "Legend"),
    "compare_contours": ("预测与标注轮廓", "Prediction and ground-truth contours"),
    "dice_label": ("Dice 系数", "Dice"),
    "preview_scaled": (
        "预览按 {w}×{h} 缩小显示以保持滑块流畅；运行分析时使用全分辨率图像。",
        "The preview is scaled down to {w}×{h} so the sliders stay quick; the analysis uses the full-resolution image.",
    ),
}


def normalise_lang(lang: str | None) -> str:
    return lang if lang in LANGUAGES else "zh"


def t(key: str, lang: str = "zh", **values) -> str:
    """The string ``key`` in ``lang``, formatted with ``values``; unknown keys come back as the key itself."""
    pair = STRINGS.get(key)
    if pair is None:
        return key
    text = pair[0] if normalise_lang(lang) == "zh" else pair[1]
    return text.format(**values) if values else text


def task_name(task: str, lang: str = "zh") -> str:
    return catalog.TASK_NAMES.get(task, {}).get(normalise_lang(lang), task)


def group_name(group_key: str, lang: str = "zh") -> str:
    group = catalog.ORGAN_GROUPS.get(group_key)
    return group.name(normalise_lang(lang)) if group else group_key


def class_name(task: str, dataset_name: str, index: int, lang: str = "zh") -> str:
    return catalog.find_dataset(task, dataset_name).class_name(index, normalise_lang(lang))


def class_names(task: str, dataset_name: str, lang: str = "zh") -> list[str]:
    return catalog.find_dataset(task, dataset_name).class_names(normalise_lang(lang))


MEASURE_LABELS: dict[str, tuple[str, str]] = {
    "area": ("面积", "Area"),
    "longest_diameter": ("最长径", "Longest diameter"),
    "perpendicular_diameter": ("垂直径", "Perpendicular diameter"),
    "head_circumference": ("头围 (HC)", "Head circumference (HC)"),
    "biparietal_diameter": ("双顶径 (BPD)", "Biparietal diameter (BPD)"),
}


def measure_label(base: str, lang: str = "zh") -> str:
    pair = MEASURE_LABELS.get(base)
    if pair is None:
        return base
    return pair[0] if normalise_lang(lang) == "zh" else pair[1]
