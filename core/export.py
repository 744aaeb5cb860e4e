"""``python -m core export``: the team's own network (a factory and a checkpoint) → one servable ``.pt2`` file.

::

    python -m core export --factory team_models:build_samus --weights best_model.pth \\
        --seg-output one --threshold 0.5 --out weights/samus.pt2 --name samus

1. imports ``MODULE:CALLABLE`` (from ``PYTHONPATH`` or the current directory) and calls it with no arguments;
   it returns the network (an ``nn.Module``);
2. loads ``--weights`` strictly: ``{'model': …}`` / ``{'state_dict': …}`` wrappers and ``module.`` (DataParallel)
   / ``_orig_mod.`` (torch.compile) prefixes are handled, every other missing or unexpected key is an error;
3. wraps it in the served contract, ``model(images[B,S,S,3] in [0,1], position[B,8], task[B,2], type[B,3],
   nature[B,2]) -> (seg, cls2[B,2], cls4[B,4])``: images channels-last or ``--input-layout nchw``; the prompts
   passed as five arguments, as one tuple ``net((images, position, task, type, nature))`` (the team's
   ``prompt=True`` convention), or not at all (``--prompts``; ``auto`` decides from ``forward``'s signature and a
   ``prompt`` attribute);
4. exports it with ``torch.export`` and a dynamic batch; when the network cannot take one (the Swin/SAM
   ``window_reverse`` computes ``B = int(windows.shape[0] / (H * W / ws / ws))``), with a fixed batch of 1,
   recorded as ``"max_batch": 1`` (the service then runs it one image at a time). Never ``torch.jit.trace``:
   it freezes the batch size silently;
5. checks the exported program against the eager network at batch 1 and 3 (refuses beyond ``--tolerance``),
   saves it, loads it back the way the service will (contract shapes, batch-of-3 check), and prints the
   ``weights/models.json`` entry.

Exit status: 0 written, 1 refused (a check failed), 2 bad options, factory or weights.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ExportError, SetupError, UUSICError
from core.models.base import SEG_ACTIVATIONS, example_inputs, file_sha256

PROMPT_MODES = ("auto", "args", "tuple", "none")
LAYOUTS = ("nhwc", "nchw")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("model", "state_dict")


# ------------------------------------------------------------------------------------------------ the network

def load_factory(target: str) -> Callable[[], nn.Module]:
    """``MODULE:CALLABLE`` (``CALLABLE`` may be dotted) imported from ``PYTHONPATH`` or the current directory."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SetupError(f"--factory must be MODULE:CALLABLE, got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or whatever the user's module raises on import
        raise SetupError(f"cannot import {module_name!r} (from PYTHONPATH or {cwd}): "
                         f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SetupError(f"{module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SetupError(f"{target} is not callable")
    return obj


def build_network(target: str) -> nn.Module:
    factory = load_factory(target)
    try:
        net = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise SetupError(f"{target}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise SetupError(f"{target}() must return a torch.nn.Module, got {type(net).__name__}")
    return net


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: unwraps ``{'model': …}`` / ``{'state_dict': …}``, strips ``module.`` and
    ``_orig_mod.`` prefixes. Read with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SetupError(f"weights file {path} not found") from None
    except Exception as exc:  # noqa: BLE001 - pickle / zip / weights_only refusals
        raise SetupError(f"cannot read {path} as a PyTorch checkpoint (weights_only): "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    while isinstance(data, Mapping):
        inner = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), Mapping)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, Mapping):
        raise SetupError(f"{path} holds a {type(data).__name__}, not a state dict")
    state = {}
    for key, value in data.items():
        name = str(key)
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if isinstance(value, torch.Tensor):
            state[name] = value
    if not state:
        raise SetupError(f"{path} holds no tensors")
    return state


def load_weights(net: nn.Module, path: Path | str) -> None:
    """Load ``path`` into ``net`` strictly; a missing, unexpected or mis-shaped key is a :class:`SetupError`."""
    state = read_state_dict(path)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches
        raise SetupError(f"{path} does not fit the network: {' '.join(str(exc).split())[:600]}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing key(s): {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected key(s): {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise SetupError(f"{path} does not match the network ({'; '.join(problems)})")


def prompt_mode(net: nn.Module) -> str:
    """``args`` when ``forward`` takes five inputs, ``tuple`` when the network has ``prompt = True`` (the team's
    ``SAMUSAdapter(config, prompt=True)`` reads ``x = (image, position, task, type, nature)``), else ``none``."""
    try:
        params = list(inspect.signature(net.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 5 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return "args"
    return "tuple" if getattr(net, "prompt", False) is True else "none"


class ContractWrapper(nn.Module):
    """The served contract around a network: layout and prompts adapted, outputs ``(seg, cls2, cls4)``."""

    def __init__(self, net: nn.Module, *, layout: str = "nhwc", prompts: str = "args"):
        super().__init__()
        if layout not in LAYOUTS:
            raise SetupError(f"input layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if prompts not in PROMPT_MODES[1:]:
            raise SetupError(f"prompts must be one of {', '.join(PROMPT_MODES[1:])}, got {prompts!r}")
        self.net = net
        self.layout = layout
        self.prompts = prompts

    def forward(self, images, position, task, type_, nature):
        x = images.permute(0, 3, 1, 2) if self.layout == "nchw" else images
        if self.prompts == "args":
            out = self.net(x, position, task, type_, nature)
        elif self.prompts == "tuple":
            out = self.net((x, position, task, type_, nature))
        else:
            out = self.net(x)
        if isinstance(out, Mapping):
            out = (out["seg"], out["cls2"], out["cls4"])
        return out[0], out[1], out[2]


# ------------------------------------------------------------------------------------------------ export

@dataclass
class ExportResult:
    """What :func:`export_network` wrote and measured."""

    entry: dict
    path: Path
    max_batch: int | None
    export_sec: float
    max_abs_diff: dict = field(default_factory=dict)  # {"batch1": Δ, "batch3": Δ} over the three outputs
    fallback_reason: str | None = None
    total_sec: float = 0.0  # export, checks, save and the load-back check


def _contract_channels(out, size: int, batch: int) -> int:
    """The segmentation's channel count after checking the eager output follows the contract."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ExportError(f"the network must return (seg, cls2, cls4), got {type(out).__name__}")
    seg, cls2, cls4 = out
    if seg.dim() != 4 or seg.shape[0] != batch or seg.shape[1] not in (1, 2) or tuple(seg.shape[2:]) != (size, size):
        raise ExportError(f"the segmentation output has shape {tuple(seg.shape)}; expected "
                          f"[{batch}, 1 or 2, {size}, {size}] for --input-size {size}")
    if tuple(cls2.shape) != (batch, 2) or tuple(cls4.shape) != (batch, 4):
        raise ExportError(f"the classification outputs have shapes {tuple(cls2.shape)} and {tuple(cls4.shape)}; "
                          f"expected ({batch}, 2) and ({batch}, 4)")
    return int(seg.shape[1])


def _run(module, inputs, max_batch: int | None):
    """``module`` over ``inputs``, one chunk of at most ``max_batch`` at a time (the way the service runs it)."""
    batch = inputs[0].shape[0]
    step = max_batch or batch
    parts = [module(*(t[i : i + step] for t in inputs)) for i in range(0, batch, step)]
    return tuple(torch.cat([p[k] for p in parts]) for k in range(3))


def _compare(eager: nn.Module, program_module, inputs, max_batch: int | None) -> tuple[float, float]:
    """(max |Δ|, max |eager|) over the three outputs."""
    with torch.inference_mode():
        want = eager(*inputs)
        got = _run(program_module, inputs, max_batch)
    diff = max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))
    scale = max(float(w.float().abs().max()) for w in want)
    return diff, scale


def _export(wrapper: nn.Module, size: int, device: torch.device, dynamic: bool):
    batch = 2 if dynamic else 1
    example = example_inputs(batch, size, device=device)
    shapes = None
    if dynamic:
        dim = torch.export.Dim("batch", min=1, max=1024)
        shapes = tuple({0: dim} for _ in example)
    return torch.export.export(wrapper, example, dynamic_shapes=shapes, strict=False)


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:300]}"


def export_network(net: nn.Module, out: Path | str, *, input_size: int = 224, seg_output: str | None = None,
                   threshold: float = 0.5, seg_activation: str = "sigmoid", layout: str = "nhwc",
                   prompts: str = "auto", name: str | None = None, preprocessing: str = "center_crop",
                   device: str | torch.device = "cpu", tolerance: float = 1e-4, static_batch: bool = False,
                   description: str = "", manifest_file: str | None = None, log=None) -> ExportResult:
    """Export ``net`` (weights already loaded) as a served ``torch_export`` file at ``out``; see the module doc.

    Raises :class:`ExportError` when the network does not follow the contract or the exported program does not
    reproduce it (``max |Δ| > tolerance * max(1, max |eager|)`` at batch 1 or 3).
    """
    say = log or (lambda message: None)
    out = Path(out)
    device = torch.device(device)
    if seg_activation not in SEG_ACTIVATIONS:
        raise SetupError(f"seg activation must be one of {', '.join(SEG_ACTIVATIONS)}, got {seg_activation!r}")
    mode = prompt_mode(net) if prompts == "auto" else prompts
    wrapper = ContractWrapper(net.eval().to(device), layout=layout, prompts=mode).eval()
    seg_output = _checked_seg_output(wrapper, input_size, layout, mode, device, seg_output, threshold,
                                     seg_activation)
    say(f"network: {type(net).__name__}, input {layout} {input_size}x{input_size}, prompts {mode}, "
        f"segmentation: {'one channel' if seg_output == 'one' else 'two channels'}")
    start = time.perf_counter()
    built = _ProgramBuilder(wrapper, input_size, device, tolerance, say).build(static_batch)
    entry: dict[str, Any] = {
        "name": name or out.stem, "arch": "torch_export", "file": manifest_file or str(out), "sha256": "",
        "input_size": input_size, "preprocessing": preprocessing, "datasets": None, "seg_output": seg_output,
        "threshold": threshold, "seg_activation": seg_activation, "max_batch": built.max_batch,
    }
    if description:
        entry["description"] = description
    _save_checked(built.program, out, entry, device)
    return ExportResult(entry, out, built.max_batch, built.export_sec, built.checks, built.reason,
                        time.perf_counter() - start)


def _checked_seg_output(wrapper: nn.Module, input_size: int, layout: str, mode: str, device: torch.device,
                        seg_output: str | None, threshold: float, seg_activation: str) -> str:
    """Run the wrapped network once on the contract's inputs; its segmentation output kind ("one" / "two")."""
    from core.models.exported import threshold_offset

    with torch.inference_mode():
        try:
            probe = wrapper(*example_inputs(1, input_size, device=device))
        except Exception as exc:  # noqa: BLE001 - the user's network on the contract's inputs
            raise ExportError(f"the network fails on one {input_size}x{input_size} image ({layout}, prompts "
                              f"{mode}): {_first_line(exc)}") from None
    channels = _contract_channels(probe, input_size, 1)
    found = "one" if channels == 1 else "two"
    seg_output = seg_output or found
    if seg_output != found:
        raise ExportError(f"--seg-output {seg_output} but the network's segmentation has {channels} channel(s)")
    if seg_output == "one":
        try:
            threshold_offset(threshold, seg_activation)
        except UUSICError as exc:
            raise SetupError(str(exc)) from None
    return seg_output


class _ProgramBuilder:
    """torch.export of the wrapped network: a dynamic batch when it exports and reproduces the network at batch 1
    and 3, else a fixed batch of 1 (``max_batch`` 1); ``checks`` holds max |Δ| per checked batch."""

    def __init__(self, wrapper: nn.Module, input_size: int, device: torch.device, tolerance: float, say: Any):
        self.wrapper, self.input_size, self.device, self.tolerance, self.say = (wrapper, input_size, device,
                                                                                tolerance, say)
        self.check_inputs = {b: example_inputs(b, input_size, seed=10 + b, device=device) for b in (1, 3)}
        self.checks: dict[str, float] = {}
        self.export_sec = 0.0
        self.reason: str | None = None
        self.max_batch: int | None = None
        self.program: Any = None

    def build(self, static_batch: bool) -> _ProgramBuilder:
        if static_batch:
            self.reason = "--static-batch"
        else:
            start = time.perf_counter()
            try:
                self.program = _export(self.wrapper, self.input_size, self.device, dynamic=True)
            except Exception as exc:  # noqa: BLE001 - any export failure: try a fixed batch of 1
                self.reason = _first_line(exc)
            self.export_sec += time.perf_counter() - start
        if self.program is not None and (problem := self.verify(self.program, None)) is not None:
            self.reason, self.program = f"the dynamic-batch program disagrees: {problem}", None
        if self.program is None:
            self._build_fixed(static_batch)
        return self

    def _build_fixed(self, static_batch: bool) -> None:
        if static_batch:
            self.say("exporting with a fixed batch of 1 (--static-batch)")
        else:
            self.say(f"dynamic batch not possible ({self.reason}; typically the batch size turned into a Python "
                     "number, e.g. int(windows.shape[0] / ...) in window_reverse); exporting with a fixed batch of 1")
        started = time.perf_counter()
        try:
            self.program = _export(self.wrapper, self.input_size, self.device, dynamic=False)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"torch.export fails even with a fixed batch of 1: {_first_line(exc)}") from None
        self.export_sec += time.perf_counter() - started
        self.max_batch = 1
        problem = self.verify(self.program, 1)
        if problem is not None:
            raise ExportError(f"refused: the exported program does not reproduce the network ({problem})")

    def verify(self, candidate: Any, limit: int | None) -> str | None:
        """None when ``candidate`` reproduces the network at batch 1 and 3 (up to ``limit``), else the problem."""
        module = candidate.module()
        for b, inputs in self.check_inputs.items():
            try:
                diff, scale = _compare(self.wrapper, module, inputs, limit)
            except Exception as exc:  # noqa: BLE001 - the program rejects the batch
                return f"batch {b}: {_first_line(exc)}"
            self.checks[f"batch{b}"] = diff
            if not diff <= self.tolerance * max(1.0, scale):
                return f"batch {b}: max |Δ| {diff:.3g} between eager and exported (scale {scale:.3g})"
        return None


def _save_checked(program: Any, out: Path, entry: dict[str, Any], device: torch.device) -> None:
    """Save the program beside ``out``, fill in ``entry["sha256"]``, load the file back exactly as the service
    will (contract shapes, batch-of-3 check) and only then let it take ``out``."""
    from core.models import registry

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.pt2")  # torch.export.save wants a .pt2 name
    torch.export.save(program, str(partial))
    entry["sha256"] = file_sha256(partial)
    spec = replace(registry.spec_from_dict(entry, "export"), file=str(partial.resolve()))
    try:
        registry.load_model(spec, device, weights_dir=out.parent)
    except UUSICError as exc:
        partial.unlink(missing_ok=True)
        raise ExportError(f"refused: the saved file does not load as a served model: {exc}") from None
    os.replace(partial, out)


# ------------------------------------------------------------------------------------------------ command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn the team's own network (a factory and a checkpoint) into one servable torch.export (.pt2) "
                    "file, checked, with its manifest entry.",
        epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--factory", required=True, help="MODULE:CALLABLE returning the network (nn.Module)")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint loaded strictly into the network")
    p.add_argument("--out", type=Path, required=True, help="the .pt2 file to write")
    p.add_argument("--name", default=None, help="manifest name (default: the file's stem)")
    p.add_argument("--input-size", type=int, default=224, help="square input size S (default 224)")
    p.add_argument("--seg-output", choices=["two", "one"], default=None,
                   help="two-channel logits or one channel (default: what the network returns)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="one channel: foreground where activation(s) > THRESHOLD (default 0.5)")
    p.add_argument("--seg-activation", choices=list(SEG_ACTIVATIONS), default="sigmoid",
                   help="one channel: sigmoid = the head outputs logits, foreground sigmoid(s) > T (default); "
                        "none = threshold the raw output, s > T (a head that outputs probabilities, or the team's "
                        "model.py, which compares the logits with 0.5)")
    p.add_argument("--input-layout", choices=list(LAYOUTS), default="nhwc",
                   help="what the network takes: nhwc = images[B,S,S,3] as served (default), nchw = [B,3,S,S]")
    p.add_argument("--prompts", choices=list(PROMPT_MODES), default="auto",
                   help="args: net(x, position, task, type, nature); tuple: net((x, position, task, type, nature)); "
                        "none: net(x); auto (default): args when forward takes 5 inputs, tuple when net.prompt is "
                        "True, else none")
    p.add_argument("--preprocessing", choices=["center_crop", "letterbox"], default="center_crop",
                   help="the geometry the network was trained with (default center_crop, the baseline's)")
    p.add_argument("--device", default="cpu", help="export on this device (default cpu)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="refuse when max |eager - exported| > TOL * max(1, max |eager|) (default 1e-4)")
    p.add_argument("--static-batch", action="store_true", help="export with a fixed batch of 1 straight away")
    return p


def _manifest_file(out: Path) -> str:
    """``file`` for the manifest: relative to the weights dir when ``out`` lies in it, else absolute."""
    from core.settings import Settings

    try:
        weights_dir = Settings.from_env().weights_dir.resolve()
        return str(out.resolve().relative_to(weights_dir))
    except (ValueError, UUSICError):
        return str(out.resolve())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.input_size < 8:
        print("error: --input-size must be at least 8", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        net = build_network(args.factory)
        if args.weights is not None:
            load_weights(net, args.weights)
            log(f"weights: {args.weights} loaded strictly")
        description = f"exported by `python -m core export` from {args.factory}"
        if args.weights is not None:
            description += f" with {args.weights.name}"
        result = export_network(
            net, args.out, input_size=args.input_size, seg_output=args.seg_output, threshold=args.threshold,
            seg_activation=args.seg_activation, layout=args.input_layout, prompts=args.prompts, name=args.name,
            preprocessing=args.preprocessing, device=args.device, tolerance=args.tolerance,
            static_batch=args.static_batch, description=description, manifest_file=_manifest_file(args.out),
            log=log)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UUSICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    deltas = ", ".join(f"{k} max |Δ| {v:.2e}" for k, v in result.max_abs_diff.items())
    batch = "dynamic batch" if result.max_batch is None else f"fixed batch of {result.max_batch} (max_batch 1)"
    log(f"exported {result.path}: torch.export {result.export_sec:.1f} s ({result.total_sec:.1f} s with the checks), "
        f"{batch}; eager vs exported: {deltas}")
    log("add this entry to weights/models.json (set \"datasets\" to the datasets it serves):")
    print(json.dumps(result.entry, indent=1, ensure_ascii=False))
    return 0
