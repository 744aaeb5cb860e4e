"""The recogniser's encoder features (issue 25, ``scripts/recognizer_encoder.py``; trained, not served yet): the
vector is what every forward pass of the demo network computes, whatever dataset (prompt) it was asked for."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from core.settings import PROJECT_ROOT

SCRIPTS = PROJECT_ROOT / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder():
    return _script("recognizer_encoder")


def _image(seed: int, size: tuple[int, int] = (300, 220)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def test_the_vector_has_one_mean_per_encoder_channel_and_is_repeatable(encoder):
    first, again = encoder.embedding(_image(0)), encoder.embedding(_image(0))
    assert first.shape == (encoder.LENGTH,) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)  # our own code's determinism: same process, same input
    assert encoder.embedding(_image(0)[..., 0]).shape == (encoder.LENGTH,)  # a grey image too
    assert encoder.tag().startswith("encoder:demo_unet:")


def test_every_forward_pass_computes_the_vector_whatever_the_prompt(encoder):
    """The encoder is prompt-free: hooks on the full network's stem and stages, run with two different prompts,
    give the same global averages as :func:`embedding` (so serving it from the forward pass would be free)."""
    net = encoder.network()
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.mean(dim=(2, 3))[0]))
             for m in [net.stem, *net.encoder]]
    image = torch.from_numpy(encoder.letterboxed(_image(1))[None])
    vectors = []
    try:
        for position in (0, 5):
            seen.clear()
            prompts = [torch.zeros(1, n) for n in (8, 2, 3, 2)]
            prompts[0][0, position] = 1.0
            with torch.inference_mode():
                net(image, *prompts)
            vectors.append(torch.cat(seen).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    alone = encoder.embedding(_image(1))
    for vector in vectors:
        np.testing.assert_allclose(vector, alone, rtol=1e-5, atol=1e-6)


def test_training_it_into_the_served_weights_is_refused(tmp_path):
    train = _script("train_recognizer")
    with pytest.raises(SystemExit, match="not served yet"):
        train.main(["--features", "encoder", "--out", str(PROJECT_ROOT / "weights"), "--data-root", str(tmp_path)])
