"""A stand-in for the UUSIC25 challenge's own inference loop, run as a whole process (bench, not part of ``core``).

    .venv/bin/python bench/challenge_loop.py --input-json J --input-dir D --output-dir O --weights best_model.pth

It mirrors ``baseline/model.py`` of github.com/uusic2025/challenge (commit a152776; its ``Model`` class and the
``CenterCropGenerator`` of ``baseline/datasets/dataset.py``) step for step, written for this project (none of
their code is copied here): build the network on the device, ``torch.load`` the checkpoint and strip / add the
``module.`` prefix as they do, ``eval()``; then per image, one after the other: PIL open → RGB → ``/ 255.0``
(float64) → scipy ``zoom`` of the short side to 224 (order 1) and of an all-zero label (order 0) → centre 224 crop →
float32 tensor ``[1, 224, 224, 3]`` → the four one-hot prompts from the entry's task and organ → one eager fp32
forward (batch 1, ``torch.no_grad``) → softmax + argmax of the dataset's head (4 classes for Breast_luminal), or the
argmax mask × 255 resized to the original size with nearest neighbour (OpenCV's ``INTER_NEAREST``; its index rule in
numpy when OpenCV is not installed) and saved with PIL's defaults → ``classification.json`` (``indent=4``) at the end.
A tqdm bar runs over the list, as theirs.

Differences, both in the challenge's favour or neutral: the network is ours (:class:`core.models.uusic_omni.
UUSICOmniNet`, the same architecture and parameter names; theirs needs timm, einops and yacs, which this project does
not install, so their import cost is missing here); masks go to ``imgs → masks`` with a ``.png`` suffix
(``core.paths.mask_relative_path``: their ``replace('img', 'mask')`` keeps the input's suffix, which with the JPEG
images of our data would save lossy JPEG masks; on the challenge's PNG inputs both name the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import zoom
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.models.uusic_omni import UUSICOmniNet  # noqa: E402

POSITION = ["breast", "cardiac", "thyroid", "head", "kidney", "appendix", "liver", "indis"]
ORGAN_POSITION = {"Breast": "breast", "Heart": "cardiac", "Thyroid": "thyroid", "Head": "head", "Kidney": "kidney",
                  "Appendix": "appendix", "Liver": "liver"}
TUMOUR_ORGANS = {"Breast", "Thyroid"}  # nature "tumor"; every other organ (and an unknown one) is "organ"
TASKS = ["segmentation", "classification"]
SIZE = 224


def one_hot(index: int, length: int, device: torch.device) -> torch.Tensor:
    vector = [0] * length
    vector[index] = 1
    return torch.tensor(vector, dtype=torch.float).unsqueeze(0).to(device)


def load_network(weights: Path, device: torch.device) -> UUSICOmniNet:
    """The network in eval mode with the checkpoint's weights, the key handling of their ``Model.__init__``."""
    network = UUSICOmniNet().to(device)
    state = torch.load(weights, map_location=device)
    if "module.swin.layers_task_cls_head_4cls.0.weight" in state:
        state = state.get("model", state)
        network.load_state_dict({(k[7:] if k.startswith("module.") else k): v for k, v in state.items()})
    elif "swin.layers_task_cls_head_4cls.0.weight" in state:
        network.load_state_dict(state)
    elif "model" in state:  # their third branch is for omni_test's own files; the trainer's latest.pth nests here
        network.load_state_dict({(k[7:] if k.startswith("module.") else k): v for k, v in state["model"].items()})
    else:
        raise SystemExit(f"{weights}: not a baseline checkpoint")
    network.eval()
    return network


def center_crop(image: np.ndarray) -> torch.Tensor:
    """Their ``CenterCropGenerator`` on ``{'image': rgb / 255.0, 'label': zeros}``: the image tensor it returns."""
    label = np.zeros(image.shape[:2])
    x, y, _ = image.shape
    short = y if x > y else x
    image = zoom(image, (SIZE / short, SIZE / short, 1), order=1)
    label = zoom(label, (SIZE / short, SIZE / short), order=0)
    x, y, _ = image.shape
    sx, sy = x // 2 - SIZE // 2, y // 2 - SIZE // 2
    image = image[sx : sx + SIZE, sy : sy + SIZE, :]
    label = label[sx : sx + SIZE, sy : sy + SIZE]
    torch.from_numpy(label.astype(np.float32)).long()  # built (and dropped) by their transform too
    return torch.from_numpy(image.astype(np.float32)).unsqueeze(0)


def resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)``."""
    try:
        import cv2
    except ImportError:
        rows, cols = mask.shape  # OpenCV's resizeNN: source index = floor(x * (1 / (dst / src))), clipped
        cx = np.minimum(np.floor(np.arange(width) * (1.0 / (width / cols))).astype(np.int64), cols - 1)
        cy = np.minimum(np.floor(np.arange(height) * (1.0 / (height / rows))).astype(np.int64), rows - 1)
        return mask[np.ix_(cy, cx)]
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def mask_path(output_dir: Path, rel: str) -> Path:
    parts = Path(rel).with_suffix(".png").parts
    return output_dir.joinpath(*["masks" if p == "imgs" else p for p in parts])


def predict_one(network: UUSICOmniNet, device: torch.device, entry: dict, input_dir: Path, output_dir: Path,
                class_predictions: dict) -> None:
    img = Image.open(os.path.join(input_dir, entry["img_path_relative"])).convert("RGB")
    original_size = img.size
    image_tensor = center_crop(np.array(img) / 255.0).to(device)
    organ, task = entry["organ"], entry["task"]
    with torch.no_grad():
        position = one_hot(POSITION.index(ORGAN_POSITION.get(organ, "indis")), 8, device)
        task_prompt = one_hot(TASKS.index(task), 2, device)
        nature = one_hot(0 if organ in TUMOUR_ORGANS else 1, 2, device)
        type_prompt = one_hot(0, 3, device)  # "whole"
        outputs = network((image_tensor, position, task_prompt, type_prompt, nature))
    if task == "classification":
        logits = outputs[2] if entry["dataset_name"] == "Breast_luminal" else outputs[1]
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().flatten()
        class_predictions[entry["img_path_relative"]] = {"probability": probabilities.tolist(),
                                                         "prediction": int(np.argmax(probabilities))}
    elif task == "segmentation":
        seg = torch.argmax(torch.softmax(outputs[0], dim=1), dim=1).squeeze(0)
        mask = resize_nearest(seg.cpu().numpy().astype(np.uint8) * 255, *original_size)
        target = mask_path(output_dir, entry["img_path_relative"])
        os.makedirs(target.parent, exist_ok=True)
        Image.fromarray(mask).save(target)


def main() -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-json", required=True, type=Path)
    parser.add_argument("--input-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--weights", required=True, type=Path, help="a baseline checkpoint (best_model.pth layout)")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    data_list = json.loads(args.input_json.read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = load_network(args.weights, device)
    class_predictions: dict = {}
    for entry in tqdm(data_list, desc="Processing images"):
        predict_one(network, device, entry, args.input_dir, args.output_dir, class_predictions)
    with open(args.output_dir / "classification.json", "w") as f:
        json.dump(class_predictions, f, indent=4)
    print(f"done: {len(data_list)} images in {time.perf_counter() - start:.2f} s (after interpreter start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
