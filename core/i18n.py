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
    "no_model_here": (
        "暂无可用于 {dataset} 的模型，因此这里不提供上传、编辑和分析。请选择标有模型的数据集；"
        "若团队有该数据集的检查点，可在“模型与系统”页查看如何接入。",
        "There is no model for {dataset} yet, so there is nothing to upload, edit or analyse here. Choose a dataset "
        "that has a model; if your team has a checkpoint for it, see Models & System for how to serve it.",
    ),
    "link_invalid": (
        "链接中的 {what}“{value}”无效（可选：{known}）。请在下方选择。",
        "The link's {what} “{value}” is not valid (known: {known}). Please choose below.",
    ),
    "link_what_task": ("任务", "task"),
    "link_what_organ": ("器官", "organ"),
    "link_what_dataset": ("数据集", "dataset"),
    "image_other_dataset": (
        "图像“{name}”是在 {old} 下加载的，当前选择是 {new}：为避免结果记录到错误的器官，它已被搁置。",
        "The image “{name}” was loaded under {old}; the selection is now {new}, so it is set aside (a result must "
        "not be recorded under the wrong organ).",
    ),
    "image_use_here": ("确认将该图像用于 {dataset}", "Use this image for {dataset}"),
    "source": ("图像来源", "Image source"),
    "source_upload": ("上传图像", "Upload an image"),
    "source_sample": ("随机样本", "Random sample"),
    "upload_label": (
        "选择超声图像或动态影像（PNG、JPEG、BMP、TIFF、DICOM，含多帧；MP4、AVI、MOV、WebM、MKV 视频）",
        "Choose an ultrasound image or cine loop (PNG, JPEG, BMP, TIFF, DICOM incl. multi-frame; MP4, AVI, MOV, WebM, "
        "MKV video)",
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
    "tech_details": ("技术细节（资源、请求与响应 JSON、系统负载）",
                     "Technical details (resources, request and response JSON, system load)"),
    "tech_system_now": ("当前系统负载", "System load now"),
    "input_preview": ("输入图像（可缩放查看）", "Input image (zoom and pan)"),
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
    # history / batch / models (issue 12 and issue 11 §5-6, pages/history.py, batch.py, models.py)
    "hcol_id": ("编号", "Run"),
    "hcol_timestamp": ("时间", "Time"),
    "hcol_source": ("来源", "Source"),
    "hcol_img_name": ("图像", "Image"),
    "hcol_task": ("任务", "Task"),
    "hcol_dataset_name": ("数据集", "Dataset"),
    "hcol_organ": ("器官", "Organ"),
    "hcol_model_name": ("模型", "Model"),
    "hcol_label_name": ("预测", "Prediction"),
    "hcol_mask_area_px": ("掩膜面积 (px²)", "Mask area (px²)"),
    "hcol_inference_time_sec": ("推理时间 (秒)", "Inference (s)"),
    "hcol_device": ("设备", "Device"),
    "hcol_error_type": ("错误类型", "Error type"),
    "hcol_error": ("错误", "Error"),
    "hcol_batch_id": ("批次", "Batch"),
    "hcol_img_path_relative": ("存储文件", "Stored file"),
    "hcol_input_sha256": ("输入 SHA-256", "Input SHA-256"),
    "hcol_model_sha256": ("模型 SHA-256", "Model SHA-256"),
    "hcol_prediction": ("类别编号", "Class index"),
    "hcol_mask_path": ("掩膜文件", "Mask file"),
    "hcol_mask_path_relative": ("掩膜（相对路径）", "Mask (relative)"),
    "hcol_memory_usage_mb": ("内存 (MB)", "Memory (MB)"),
    "hcol_gpu_memory_usage_mb": ("GPU 显存 (MB)", "GPU memory (MB)"),
    "hcol_gpu_memory_reserved_mb": ("GPU 保留 (MB)", "GPU reserved (MB)"),
    "hcol_purged_at": ("文件清理时间", "Files purged"),
    "hcol_edits": ("编辑", "Edits"),
    "hcol_probabilities": ("概率", "Probabilities"),
    "hcol_measurements": ("测量", "Measurements"),
    "src_dashboard": ("仪表盘", "Dashboard"),
    "src_batch": ("批量", "Batch"),
    "src_api": ("API", "API"),
    "src_cli": ("命令行", "CLI"),
    "h_time_zone": ("时间为本地时间（{zone} 时区）。", "Times are local times ({zone} time zone)."),
    "h_run_title": ("记录 #{n} · {name} · {time}", "Run #{n} · {name} · {time}"),
    "h_run_facts": ("任务：{task} · 数据集：{dataset} · 模型：{model} · 来源：{source}",
                    "Task: {task} · Dataset: {dataset} · Model: {model} · Source: {source}"),
    "h_raw_json": ("原始记录 JSON", "Raw record JSON"),
    "h_original": ("原图", "Image"),
    "h_file_missing": ("该记录的文件已不存在（可能已被清理或移走）：{message}",
                       "The files of this run are no longer available (cleaned up or moved): {message}"),
    "h_spacing": ("像素间距：{spacing} mm/像素（来源：{source}）", "Pixel spacing: {spacing} mm/px (source: {source})"),
    "h_spacing_none": ("无像素间距：测量仅以像素为单位。", "No pixel spacing: measurements in pixels only."),
    "h_frame": ("第 {k} 帧（共 {n} 帧）", "Frame {k} of {n}"),
    "hcol_frames": ("帧数", "Frames"),
    "h_cine_frames": ("动态序列 · {n} 帧", "Cine · {n} frames"),
    "h_cine_entry": ("动态序列 {name} · {n} 帧 · {time}", "Cine {name} · {n} frames · {time}"),
    "h_frame_col": ("帧", "Frame"),
    "h_frame_area_mm2": ("面积 (mm²)", "Area (mm²)"),
    "h_frame_length": ("最长径 (mm)", "Longest diameter (mm)"),
    "h_frame_pick": ("重新打开的帧", "Frame to re-open"),
    "h_report_error": ("无法生成报告：{message}", "The report cannot be made: {message}"),
    "h_report_make": ("生成报告 (PDF)", "Make the report (PDF)"),
    "h_seg_make": ("生成 DICOM SEG", "Make the DICOM SEG"),
    "h_seg_not_dicom": ("DICOM SEG 仅适用于 DICOM 输入的分割记录。",
                        "A DICOM SEG exists only for segmentation runs of a DICOM input."),
    "h_compare": ("对比两条记录（同一图像）", "Compare two runs of the same image"),
    "h_compare_with": ("与之对比的记录", "Compare with run"),
    "h_compare_none": ("没有同一图像的其他成功记录可对比。", "No other successful run of this image to compare with."),
    "h_compare_linked": ("两幅图的缩放和平移是联动的（滚轮缩放，拖动平移）。",
                         "Zoom and pan are linked across the two images (scroll to zoom, drag to pan)."),
    "h_compare_numbers": ("两条记录的数值", "The two runs' numbers"),
    "h_difference": ("差值（B − A）", "Difference (B − A)"),
    "h_same_image_note": ("同一图像：输入 SHA-256 或文件相同。", "Same image: the same input SHA-256 or file."),
    "h_unit_col": ("单位", "Unit"),
    "b_limit": ("最多处理的请求数", "Requests to run (at most)"),
    "batch_failed_all": ("批量运行失败：{n} 条请求都没有结果（原因见下表）。",
                         "The batch failed: none of its {n} requests gave a result (see the table for why)."),
    "bcol_image": ("图像", "Image"),
    "bcol_task": ("任务", "Task"),
    "bcol_dataset": ("数据集", "Dataset"),
    "bcol_prediction": ("预测", "Prediction"),
    "bcol_mask_area_px": ("掩膜面积 (px²)", "Mask area (px²)"),
    "bcol_error": ("错误", "Error"),
    "bcol_run_id": ("记录编号", "Run"),
    "mcol_dataset": ("任务 / 数据集", "Task / dataset"),
    "metric_accuracy": ("准确率", "Accuracy"),
    "metric_auc": ("AUC", "AUC"),
    "metric_dice": ("Dice 系数", "Dice"),
    "metric_n": ("样本数", "Images"),
    "metric_missing": ("缺少预测", "Missing predictions"),
    "metric_nsd": ("NSD（表面 Dice）", "NSD (surface Dice)"),
    "metric_hc_mae_mm": ("头围平均绝对误差 (mm)", "HC mean abs. error (mm)"),
    "metric_hc_n": ("头围样本数", "HC images"),
    "m_technical": ("技术细节", "Technical details"),
    "error_detail": ("技术细节（英文原文）", "Technical details"),
    "cal_diameters": ("最长径与垂直径", "Max diameter + perpendicular"),
    "cal_hc": ("头围椭圆与双顶径", "HC ellipse + BPD"),
    "b_per_file": ("每张图像的数据集：数据目录中已知的文件使用其数据集，其余默认使用上方的选择，可逐行更改。",
                   "A dataset for each image: a file the data root knows uses its dataset, any other the selection "
                   "above; change any row."),
    "b_unserved_dataset": ("所选数据集没有模型，批量运行将全部跳过。",
                           "No model serves the chosen dataset: the batch would skip every image."),
    "m_name": ("名称", "Name"),
    "m_arch": ("架构", "Architecture"),
    "m_file": ("文件", "File"),
    "m_sha256": ("SHA-256", "SHA-256"),
    "m_input_size": ("输入尺寸", "Input size"),
    "m_preprocessing": ("预处理", "Preprocessing"),
    "m_datasets": ("服务的数据集", "Datasets served"),
    "m_loaded": ("已加载", "Loaded"),
    "m_all_datasets": ("全部", "all"),
    "m_device": ("设备", "Device"),
    "m_amp": ("混合精度 (AMP)", "Mixed precision (AMP)"),
    "m_backend": ("推理后端", "Inference backend"),
    "m_description": ("说明", "Description"),
    "m_field": ("项目", "Item"),
    "m_value": ("值", "Value"),
    "m_yes": ("是", "yes"),
    "m_no": ("否", "no"),
    "m_cuda": ("CUDA 可用：{value}", "CUDA available: {value}"),
    "m_package": ("软件包", "Package"),
    "m_version": ("版本", "Version"),
    "m_setting": ("设置", "Setting"),
    "m_env": ("环境变量", "Environment variable"),
    "m_where": ("位置", "Location"),
    "m_paths_note": ("路径只显示到工作目录 / 数据目录为止（不显示服务器上的完整路径）。",
                     "Paths are shown relative to the workspace / data folder (never the server's full path)."),
    "m_remote_none": ("（本地推理）", "(in-process inference)"),
    "model_desc_uusic-demo-unet": (
        "项目演示网络：带提示条件 (FiLM) 的 U-Net，285 万参数，在公开的 UUSIC 格式数据（BUSI、Fetal_HC、DDTI、CAMUS、"
        "BUS-BRA、BUSIS）上从零训练。仅供演示，不可用于诊断。详见 weights/MODEL_CARD.md。",
        "Project demo network: prompt-conditioned (FiLM) U-Net, 2.85 M parameters, trained from scratch on the public "
        "UUSIC-layout data (BUSI, Fetal_HC, DDTI, CAMUS, BUS-BRA, BUSIS). Demonstration only, not for diagnosis. "
        "See weights/MODEL_CARD.md.",
    ),
    "m_card_english": ("模型卡为英文原文。", "The model card is in English."),
    # analyze (issue 11, pages/clinical.py): cine, calibration, uncertainty, reference, report
    "cl_container_error": ("无法保留原始文件（动态序列 / DICOM）：{message}",
                           "The original file (cine loop / DICOM) cannot be kept: {message}"),
    "cl_cine_title": ("动态序列", "Cine loop"),
    "cl_cine_info": ("共 {n} 帧 · 帧率 {fps} 帧/秒", "{n} frames · {fps} frames/s"),
    "cl_frame": ("帧", "Frame"),
    "cl_frame_n": ("第 {k} 帧", "frame {k}"),
    "cl_frame_of": ("第 {k} 帧（共 {n} 帧）", "Frame {k} of {n}"),
    "cl_play": ("播放", "Play"),
    "cl_this_frame": ("“运行分析”分析当前显示的第 {k} 帧（共 {n} 帧）。",
                      "“Run analysis” analyses the frame shown: frame {k} of {n}."),
    "cl_frame_error": ("无法显示：{message}", "Cannot be shown: {message}"),
    "cl_analyze_all": ("分析全部 {n} 帧", "Analyse all {n} frames"),
    "cl_frames_progress": ("正在分析第 {done} / {n} 帧…", "Analysing frames: {done} of {n}…"),
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
    "cl_fac_of": ("{target}的面积变化分数 (FAC)", "FAC of the {target}"),
    "target_named": ("分割目标：{name}（面积与径线均为该目标的）",
                     "Segmented target: {name} (every area and diameter is of it)"),
    "cl_calibration": ("像素间距（校准）", "Pixel spacing (calibration)"),
    "cl_auto_spacing": ("图像自带：{text}", "From the image: {text}"),
    "cl_auto_none": ("图像未自带像素间距。", "The image brings no pixel spacing."),
    "cl_spacing_mode": ("间距来源", "Spacing from"),
    "cl_mode_auto": ("自动（DICOM / 标注）", "automatic (DICOM / ground truth)"),
    "cl_mode_user": ("输入 mm/像素", "enter mm/px"),
    "cl_mode_line": ("画已知长度的线", "draw a line of known length"),
    "cl_mode_none": ("不用（仅像素）", "none (pixels only)"),
    "cl_enter_spacing": ("像素间距（mm/像素）", "Pixel spacing (mm/px)"),
    "cl_enter_placeholder": ("输入数值，例如 0.12", "type a value, e.g. 0.12"),
    "cl_not_typed": ("尚未输入数值：未校准，测量仅以像素为单位。",
                     "No value typed yet: not calibrated, measurements in pixels only."),
    "cl_line_placeholder": ("输入实际距离", "type the real distance"),
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
    "cl_dicom_seg": ("DICOM SEG（掩膜）", "DICOM SEG (mask)"),
    "cl_seg_unavailable": ("无法生成 DICOM SEG：{message}", "No DICOM SEG for this run: {message}"),
    # analyze (issue 12): served marks, provenance, stale results, legend, timing
    "no_model_mark": ("· 无模型", "· no model"),
    "image_error_named": ("无法读取 {name}：{message}", "{name} cannot be read: {message}"),
    "stale_result": (
        "以下结果已过期：{changes} 在运行后已更改。请再次点击“运行分析”。",
        "This result is out of date: the {changes} changed after it was computed. Click “Run analysis” again.",
    ),
    "changed_edits": ("编辑", "edits"),
    "changed_model": ("模型", "model"),
    "changed_image": ("图像", "image"),
    "changed_dataset": ("数据集", "dataset"),
    "changed_options": ("分析选项", "analysis options"),
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


ERROR_TEXTS: dict[str, tuple[str, str]] = {  # error type, or "type:field": what went wrong, in words
    "RequestError": ("请求中的某个值无效。", "A value in the request is not valid."),
    "RequestError:pixel_spacing_mm": ("像素间距不合理：超声图像的像素间距应在 {band} 之间。",
                                      "The pixel spacing is not plausible: ultrasound spacing lies within {band}."),
    "RequestError:pixel_spacing_source": ("像素间距来源未知。", "The pixel spacing source is not known."),
    "RequestError:line": ("校准线无效：请画得更长，并输入正的已知长度。",
                          "The calibration line is not usable: draw it longer and type a positive length."),
    "ImageError": ("无法读取该图像：格式不受支持、文件已损坏或图像过大。",
                   "The image cannot be read: an unsupported format, a damaged file or too large."),
    "UploadError": ("上传的文件无法保存或被拒绝。", "The uploaded file was refused or could not be stored."),
    "PathError": ("不允许访问该文件位置。", "That file location is not allowed."),
    "NotFoundError": ("未找到所需的记录或文件（可能已被清理）。",
                      "The record or file was not found (it may have been cleaned up)."),
    "NoModelError": ("该数据集目前没有可用的模型。", "No model serves this dataset yet."),
    "ModelUnavailableError": ("模型暂时无法加载，请稍后重试或联系管理员。",
                              "The model cannot be loaded now: try again later or ask the administrator."),
    "DeviceError": ("计算设备出错，请稍后重试。", "The compute device failed: try again later."),
    "WeightsError": ("模型权重无法加载，请联系管理员。", "The model weights cannot be loaded: ask the administrator."),
    "WorkspaceError": ("服务器存储出错（例如磁盘已满）。", "The server's storage failed (e.g. the disk is full)."),
    "UnknownDataset": ("未知的数据集。", "The dataset is not known."),
    "HistoryError": ("历史记录数据库暂时不可用。", "The history database is not available now."),
    "ServiceUnavailableError": ("分析服务暂时不可用，请稍后重试。",
                                "The analysis service is not available: try later."),
    "ArchiveError": ("压缩包无法读取或不安全。", "The archive cannot be read or is not safe."),
    "PacsError": ("PACS 服务器返回错误。", "The PACS server answered with an error."),
    "PacsTimeout": ("PACS 服务器响应超时。", "The PACS server did not answer in time."),
    "ClusterError": ("计算集群暂时不可用。", "The compute cluster is not available now."),
    "BackendUnavailable": ("所选推理后端不可用。", "The chosen inference backend is not available."),
    "InternalError": ("内部错误，请联系管理员。", "An internal error: ask the administrator."),
    "ConfigError": ("服务器配置无效，请联系管理员。", "The server configuration is not valid: ask the admin."),
    "AuthConfigError": ("登录配置无效，请联系管理员。", "The sign-in configuration is not valid: ask the admin."),
    "ExportError": ("模型导出失败。", "The model export failed."),
    "SetupError": ("模型导出所需的环境未就绪。", "The model export's setup is not ready."),
    "UUSICError": ("操作失败。", "The operation failed."),
}


def error_text(error_type: str, field: str | None = None, lang: str = "zh", **values) -> str | None:
    """The error in ``lang`` by its type (and field, where one has its own words); None for a type not listed."""
    pair = ERROR_TEXTS.get(f"{error_type}:{field}") or ERROR_TEXTS.get(error_type)
    if pair is None:
        return None
    text = pair[0] if normalise_lang(lang) == "zh" else pair[1]
    try:
        return text.format(**values)
    except (KeyError, IndexError):
        return text


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
