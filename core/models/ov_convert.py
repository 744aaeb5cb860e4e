"""OpenVINO conversion in a child process, so that the serving process's logging is never touched.

``openvino.convert_model`` sets the root logger to ERROR while it runs and, when it ends, puts back the root
handlers and filters it saw at its start (``openvino.tools.ovc.logger``). In a server that converts in a background
thread while it answers requests, that would drop every INFO / WARNING record of the process for the length of the
conversion and undo a handler added meanwhile. Here the parent traces the torch module with the example inputs
(``torch.jit.trace``, what ``convert_model`` does to a module itself) into a private folder, and a fresh
interpreter (``python -m core.models.ov_convert <folder>``) converts it and writes ``model.xml`` / ``model.bin``.
The child's output goes to a log file in that folder; on failure its last lines (paths removed by the caller) are in
the error.

The child also takes the conversion's peak memory with it when it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = "module.ts"
EXAMPLES_FILE = "examples.pt"
SHAPES_FILE = "shapes.json"
LOG_FILE = "convert.log"
TIMEOUT_S = 3600.0  # a Swin-Unet converts in about a minute on a loaded 2-core machine


class ConversionFailed(RuntimeError):
    """The child could not convert the model; the message carries the tail of its log."""


def convert_in_child(module: Any, examples: tuple[Any, ...], shapes: list[list[int]], work: Path,
                     target: Path) -> None:
    """Convert ``module`` (eager torch) to OpenVINO IR at ``target`` (``…/model.xml``) in a child process.

    ``examples``: the example inputs to trace with; ``shapes``: one shape per input, ``-1`` for a dynamic dimension
    (all inputs f32). ``work`` is an empty private folder for the hand-over files (the caller removes it).
    """
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings are noise to a clinic's log
        traced = torch.jit.trace(module.eval(), tuple(examples), strict=False, check_trace=False)
    traced.save(str(work / MODULE_FILE))
    torch.save(tuple(examples), work / EXAMPLES_FILE)
    (work / SHAPES_FILE).write_text(json.dumps({"shapes": shapes, "target": str(target)}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with (work / LOG_FILE).open("wb") as log_file:
        done = subprocess.run([sys.executable, "-m", "core.models.ov_convert", str(work)], cwd=PROJECT_ROOT,
                              env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_S, check=False)
    if done.returncode != 0 or not target.is_file():
        raise ConversionFailed(f"the converter exited with {done.returncode}: {_tail(work / LOG_FILE)}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text[-lines:]) or "no output"


def _child(work: Path) -> None:
    """The child's whole job: read the hand-over files, convert, save the IR."""
    import openvino as ov
    import torch

    job = json.loads((work / SHAPES_FILE).read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(work / MODULE_FILE))
    examples = torch.load(work / EXAMPLES_FILE)
    inputs = [(shape, ov.Type.f32) for shape in job["shapes"]]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings are noise to a clinic's log
        model = ov.convert_model(module, example_input=examples, input=inputs)
    ov.save_model(model, job["target"], compress_to_fp16=False)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
