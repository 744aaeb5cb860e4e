"""Shared pytest fixtures. Append new fixtures; do not rewrite others'."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.settings import PROJECT_ROOT, Settings

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(os.environ.get("UUSIC_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "uusic-data"))


class TinyContractNet(torch.nn.Module):
    """A small deterministic network that follows the served-model contract (for export / engine tests)."""

    def __init__(self, size: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.size = size
        self.seg = torch.nn.Conv2d(3 + 15, 2, kernel_size=3, padding=1)
        self.cls2 = torch.nn.Linear(3 + 15, 2)
        self.cls4 = torch.nn.Linear(3 + 15, 4)

    def forward(self, images, position, task, type_, nature):
        x = images.permute(0, 3, 1, 2)
        prompt = torch.cat([position, task, type_, nature], dim=1)
        planes = prompt[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        seg = self.seg(torch.cat([x, planes], dim=1)) * 10.0
        pooled = torch.cat([x.mean(dim=(2, 3)), prompt], dim=1)
        return seg, self.cls2(pooled), self.cls4(pooled)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_image(path: Path, width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> Path:
    """A random image with a bright disc (so segmentation has something to find)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (min(width, height) / 4) ** 2
    gray = (rng.integers(0, 60, size=(height, width)) + disc * 160).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([gray] * 3, axis=2)).convert(mode).save(path)
    return path


@pytest.fixture()
def tiny_data_root(tmp_path: Path) -> Path:
    """A UUSIC-layout data root with a few synthetic images and a ground_truth.json."""
    root = tmp_path / "data"
    entries = []
    sizes = [(64, 48), (40, 70), (50, 50)]
    for i, (w, h) in enumerate(sizes):
        rel = f"classification/BUSI/imgs/cls_{i}.png"
        write_image(root / rel, w, h, seed=i)
        entries.append({"img_name": f"cls_{i}.png", "img_path_relative": rel, "task": "classification",
                        "dataset_name": "BUSI", "organ": "Breast", "class_label_index": i % 2,
                        "img_dimensions": [w, h]})
    for i, (w, h) in enumerate(sizes):
        rel = f"segmentation/DDTI/imgs/seg_{i}.png"
        write_image(root / rel, w, h, seed=10 + i)
        mask_rel = f"segmentation/DDTI/masks/seg_{i}.png"
        yy, xx = np.mgrid[0:h, 0:w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(w, h) / 4) ** 2
        (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / mask_rel)
        entries.append({"img_name": f"seg_{i}.png", "img_path_relative": rel, "task": "segmentation",
                        "dataset_name": "DDTI", "organ": "Thyroid", "mask_name": f"seg_{i}.png",
                        "mask_path_relative": mask_rel, "img_dimensions": [w, h]})
    (root / "ground_truth.json").write_text(json.dumps(entries, indent=1))
    return root


@pytest.fixture(scope="session")
def tiny_torchscript(tmp_path_factory) -> Path:
    """A TorchScript file of :class:`TinyContractNet` (input 32)."""
    folder = tmp_path_factory.mktemp("tiny_weights")
    path = folder / "tiny.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still a format we serve
        torch.jit.script(TinyContractNet().eval()).save(str(path))
    return path


@pytest.fixture()
def tiny_settings(tmp_path: Path, tiny_data_root: Path, tiny_torchscript: Path) -> Settings:
    """Settings with a temp workspace, the tiny data root and a manifest serving the tiny TorchScript model."""
    weights = tmp_path / "weights"
    weights.mkdir()
    target = weights / "tiny.ts"
    target.write_bytes(tiny_torchscript.read_bytes())
    manifest = [{"name": "tiny", "arch": "torchscript", "file": "tiny.ts", "sha256": sha256_of(target),
                 "input_size": 32, "preprocessing": "center_crop",
                 "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]},
                {"name": "tiny_letterbox", "arch": "torchscript", "file": "tiny.ts", "sha256": sha256_of(target),
                 "input_size": 32, "preprocessing": "letterbox",
                 "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]}]
    (weights / "models.json").write_text(json.dumps(manifest, indent=1))
    settings = Settings(workspace=tmp_path / "workspace", data_root=tiny_data_root, device="cpu",
                        weights_dir=weights)
    settings.ensure_workspace()
    return settings


@pytest.fixture(scope="session")
def omni_checkpoint(tmp_path_factory) -> Path:
    """A random-init uusic_omni checkpoint saved by the project's own code in the baseline's best_model.pth layout."""
    uusic_omni = pytest.importorskip("core.models.uusic_omni")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("omni") / "best_model.pth"
    uusic_omni.save_baseline_checkpoint(uusic_omni.UUSICOmniNet(), path, layout="module")
    return path


@pytest.fixture()
def dashboard_env(tiny_settings, monkeypatch):
    """Point the dashboard (which reads ``UUSIC_*`` variables) at the tiny model, data root and a tmp workspace."""
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    monkeypatch.setenv("UUSIC_DATA_ROOT", str(tiny_settings.data_root))
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    monkeypatch.setenv("UUSIC_DEVICE", "cpu")
    monkeypatch.delenv("UUSIC_API_URL", raising=False)
    monkeypatch.delenv("UUSIC_MODEL", raising=False)
    return tiny_settings


# ------------------------------------------------------------------ PostgreSQL for the run history (history_target)
# The history store runs on SQLite (a file) or on a database URL. `history_target` gives a test both, one per
# parameter; the PostgreSQL one is a fresh database on the server named by UUSIC_TEST_POSTGRES_URL or, without it,
# on the throwaway server of scripts/postgres.sh (started here when PostgreSQL is installed, and left running for
# the next session). No server: those tests skip, or fail when CI is set.
POSTGRES_SCRIPT = PROJECT_ROOT / "scripts" / "postgres.sh"


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server (the postgresql history_target)")


def _postgres_installed() -> bool:
    import shutil

    return shutil.which("initdb") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _start_test_postgres() -> tuple[str, str]:
    """(admin URL, "") of the server ``scripts/postgres.sh start`` runs, or ("", why there is none)."""
    import subprocess

    if not _postgres_installed():
        return "", "initdb not found (install the postgresql package, or set UUSIC_TEST_POSTGRES_URL)"
    try:
        done = subprocess.run([str(POSTGRES_SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"scripts/postgres.sh start: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return "", f"scripts/postgres.sh start failed: {done.stderr.strip()[-800:]}"
    return done.stdout.strip().splitlines()[-1], ""


def _postgres_problem(url: str) -> str:
    """Why ``url`` cannot be used ("" when a connection works); never shows the URL's password."""
    import sqlalchemy as sa

    shown = url
    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server for these tests"
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{shown} unreachable: {reason}"
    return ""


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A PostgreSQL URL with the right to create databases (skip without a server; fail when ``CI`` is set)."""
    url = os.environ.get("UUSIC_TEST_POSTGRES_URL", "").strip()
    problem = ""
    if not url:
        url, problem = _start_test_postgres()
    if url:
        problem = _postgres_problem(url)
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required when CI is set: {problem}", pytrace=False)
        pytest.skip(f"no PostgreSQL server: {problem}")
    return url


@pytest.fixture()
def postgres_url(postgres_admin_url: str):
    """The URL of a fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    import uuid

    import sqlalchemy as sa

    name = f"uusic_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # noqa: BLE001 - a database left behind on a throwaway server is harmless
        pass
    admin.dispose()


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)])
def history_target(request, tmp_path: Path):
    """Where a run history lives, once per backend: the path of a new SQLite file, or a fresh PostgreSQL URL.

    Either one is a valid ``HistoryStore(target)`` (and ``Settings.history_url`` for the URL)."""
    if request.param == "sqlite":
        return tmp_path / "history.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that runs a CLI in-process with ``--threads N`` must not change the thread count of later tests
    (outputs pinned bit for bit depend on it)."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def small_demo_weights(weights: Path) -> Path:
    """A small demo-architecture network (64 px, letterbox, seed 0) named "small" alone in the ``weights`` folder."""
    from core.models import demo_unet

    weights.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = demo_unet.DemoUNet(demo_unet.DemoConfig(widths=(4, 8, 8, 8, 8)))
    demo_unet.save_checkpoint(net, weights / "small.pt", meta={"input_size": 64, "seed": 0})
    entry = {"name": "small", "arch": "demo_unet", "file": "small.pt", "input_size": 64, "preprocessing": "letterbox"}
    (weights / "models.json").write_text(json.dumps([entry]))
    return weights


def recorded_run(settings: Settings, store: Any, request: dict, name: str, *, source: str = "api") -> int:
    """A successful run recorded as the service records one, without running a model (a segmentation's mask is the
    data root's ground truth, copied into api_out/ as ``name``; a classification says class 0)."""
    from core.history import record_run

    response = {**request, "pixel_spacing_mm": request.get("pixel_spacing_mm")}
    if request["task"] == "segmentation":
        ground_truth = Path(settings.data_root) / request["img_path_relative"].replace("/imgs/", "/masks/")
        mask = Path(settings.api_out) / "segmentation/DDTI/masks" / name
        mask.parent.mkdir(parents=True, exist_ok=True)
        mask.write_bytes(ground_truth.read_bytes())
        response.update(mask_path=str(mask), mask_area_px=100)
    else:
        response.update(prediction=0, probabilities=[0.7, 0.3], probability=[0.7, 0.3])
    return record_run(store, request, response, source=source)


@pytest.fixture()
def recogniser_answer(monkeypatch) -> dict:
    """The organ recogniser's fixed answer for every image: ``recogniser_answer["found"]`` (a Recognition; None:
    unavailable), read at each call."""
    from core import recognition

    state: dict = {"found": None}
    recognition.forget()
    monkeypatch.setattr(recognition, "recognise", lambda rgb, weights_dir=None: state["found"])
    return state


@pytest.fixture(autouse=True)
def _no_log_handler_outlives_its_test():
    """A log handler that a test's code leaves on the root or ``core`` logger holds that test's captured stderr,
    which closes with it: a later test would then get "--- Logging error ---" on its own stderr. Such a handler is
    a bug in the code under test (see ``core.train.training_log``); this fails the test that leaves one."""
    loggers = [logging.getLogger(), logging.getLogger("core")]
    before = [set(logger.handlers) for logger in loggers]
    yield
    left = [h for logger, had in zip(loggers, before, strict=True) for h in logger.handlers
            if h not in had and not type(h).__module__.startswith("_pytest")]
    for logger in loggers:
        for handler in left:
            logger.removeHandler(handler)
    assert not left, f"log handlers left behind: {left}"


@pytest.fixture(autouse=True)
def _main_module_stays_pytest():
    """Streamlit's AppTest runs a page as ``sys.modules["__main__"]`` and leaves it there; a later test that starts a
    ``spawn`` process would then run that page (``Home.py`` warms the model in a thread) in the child as
    ``__mp_main__``, whose exit aborted (SIGABRT). Put pytest's own ``__main__`` back after every test."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """The name of every image decode (still images and single-frame DICOM) while the test runs."""
    from core import imaging

    seen: list[str] = []
    for name in ("_load_pil", "_load_dicom"):
        original = getattr(imaging, name)

        def counted(data, label, *args, _original=original, **kwargs):
            seen.append(str(label))
            return _original(data, label, *args, **kwargs)

        monkeypatch.setattr(imaging, name, counted)
    return seen


def random_png(width: int = 48, height: int = 40) -> bytes:
    """A PNG of seeded random RGB noise."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_for_model(fetch_health, seconds: float, what: str, *, alive=lambda: None, detail=lambda: "",
                   or_error: bool = False) -> None:
    """Poll ``fetch_health()`` (an httpx response of ``/healthz``) every 0.5 s until it says the model is loaded (or,
    with ``or_error``, why it could not load: a server listens at once and loads in the background); ``alive()`` may
    fail the test first (a server process that exited); fail after ``seconds`` with ``detail()``."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive()
        try:
            health = fetch_health()
            if health.status_code == 200 and (health.json().get("model_loaded")
                                              or (or_error and health.json().get("error"))):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up in {seconds:.0f} s{detail()}")


def wait_for_server(process, base: str, log_path: Path, *, timeout: float) -> None:
    """:func:`wait_for_model` of a started ``python -m core serve`` (its load error counts as ready); its log when
    it dies or stalls."""
    import httpx

    def alive() -> None:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")

    wait_for_model(lambda: httpx.get(f"{base}/healthz", timeout=1), timeout, "the server", alive=alive,
                   detail=lambda: f":\n{log_path.read_text()}", or_error=True)


@contextmanager
def serve_api(env: dict[str, str], log_path: Path, *, args: tuple[str, ...] = (), timeout: float = 90):
    """A real ``python -m core serve`` on a free port with ``env``, its output in ``log_path``: yields its base URL
    once ``/healthz`` answers, and stops it (terminate, then kill) afterwards."""
    import subprocess
    import sys

    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port),
                                    *args], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_server(process, base, log_path, timeout=timeout)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a real server started by a test)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ultrasound_dicom(frames: int = 1, rows: int = 48, columns: int = 64) -> Any:
    """A synthetic ultrasound DICOM (single- or multi-frame) with UIDs, PixelSpacing and a bright disc."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.3.1" if frames > 1 else "1.2.840.10008.5.1.4.1.1.6.1"  # US multi-frame / US
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("us.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "Test^Phantom", "PHANTOM-1"
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.2, 0.2]
    yy, xx = np.mgrid[0:rows, 0:columns]
    disc = ((yy - rows / 2) ** 2 + (xx - columns / 2) ** 2) < (min(rows, columns) / 4) ** 2
    pixels = np.stack([(np.random.default_rng(f).integers(0, 60, (rows, columns)) + disc * 160).astype(np.uint8)
                       for f in range(frames)])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds: Any) -> bytes:
    """The DICOM file bytes of a data set (e.g. :func:`ultrasound_dicom`)."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ------------------------------------------------------------------ Orthanc (DICOMweb) for the PACS tests
@pytest.fixture(scope="session")
def dicomweb_url() -> str:
    """The DICOMweb root of the test PACS (``UUSIC_TEST_DICOMWEB_URL``, e.g. ``$(scripts/orthanc.sh start)``): skip
    without one, fail when ``CI`` is set."""
    import httpx

    url = os.environ.get("UUSIC_TEST_DICOMWEB_URL", "").strip().rstrip("/")
    problem = "UUSIC_TEST_DICOMWEB_URL is not set (scripts/orthanc.sh start prints one)" if not url else ""
    if url:
        try:
            httpx.get(f"{url}/studies", params={"limit": 1}, timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            problem = f"{url} does not answer QIDO-RS: {type(exc).__name__}"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"a DICOMweb PACS is required when CI is set: {problem}", pytrace=False)
        pytest.skip(f"no DICOMweb PACS: {problem}")
    return url
