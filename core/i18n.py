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
        "数据目录 {root} 中没有数据集 {dataset} 的图像。请换一个数据集或上传图像。",
        "The data root {root} has no images for dataset {dataset}. Pick another dataset or upload an image.",
    ),
    "image_error": ("无法读取该图像：{message}", "This image cannot be read: {message}"),
    "pick_image": ("请上传图像或抽取随机样本。", "Upload an image or draw a random sample."),
    "current_image": ("当前图像：{name}（{w}×{h}）", "Current image: {name} ({w}×{h})"),
    # analyze: edit
    "edit": ("编辑", "Edit"),
    "rotate90": ("旋转（90° 步进）", "Rotate (90° steps)"),
    "free_angle": ("任意角度（°）", "Free angle (°)"),
    "flip_h": ("水平翻转", "Flip horizontally"),
    "flip_v": ("垂直翻转", "Flip vertically"),
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
