"""The Ray backends (core.cluster): ``serve --backend ray`` and ``predict --backend ray`` on a two-node local Ray.

One Ray cluster for the module (ray.cluster_utils.Cluster: a head with 2 CPUs and a second node with none, so the
cluster counts as multi-node and nothing is scheduled on the second node). Checks: the Serve deployment answers as
the plain server does (same JSON, the one error body, the API key), records each call once in a PostgreSQL history,
keeps answering while Ray restarts a replica whose process was killed; the SQLite history is refused on more than
one node; the Ray Data batch writes the same bytes as the local batch CLI on the bundled samples.

Skipped only when Ray is not installed and ``CI`` is unset; with ``CI`` set a missing Ray fails.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, wait_for_model
from PIL import Image

from core.settings import PROJECT_ROOT, Settings
from tests import tolerances

if importlib.util.find_spec("ray") is None and not os.environ.get("CI"):
    pytest.skip("Ray is not installed (pip install -r requirements-cluster.txt)", allow_module_level=True)

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*")]
SAMPLES = PROJECT_ROOT / "samples"
ENTRIES = json.loads((SAMPLES / "ground_truth.json").read_text())
API_KEY = "cluster-test-key"
STABLE = ("task", "dataset_name", "organ", "img_path_relative", "img_name", "prediction", "label_name",
          "mask_path_relative", "model_name", "model_sha256", "image_width", "image_height",
          "input_sha256", "device")  # not mask_url: a later run of an image gets its own mask file (api_out/runs/)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # with CI set and no Ray this fails the tests instead of skipping them
    from ray import serve
    from ray.cluster_utils import Cluster

    from core.cluster import connect

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=0)
    cluster.wait_for_nodes()
    connect(cluster.address)
    yield cluster
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One workspace for the module, so a converted model (the CPU backend's cache) is made once."""
    return tmp_path_factory.mktemp("cluster_ws")


def _env(workspace: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUSIC_")}
    env.update(UUSIC_WORKSPACE=str(workspace), UUSIC_DATA_ROOT=str(SAMPLES), UUSIC_DEVICE="cpu", **extra)
    return env


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 150.0) -> None:
    import httpx

    def alive() -> None:
        if proc.poll() is not None:
            pytest.fail(f"serve --backend ray exited with {proc.returncode}:\n{log.read_text()[-3000:]}")

    wait_for_model(lambda: httpx.get(f"{url}/healthz", timeout=2), seconds, "the Ray Serve deployment", alive=alive,
                   detail=lambda: f":\n{log.read_text()[-3000:]}")


def _pids(url: str, tries: int = 40) -> set[int]:
    import httpx

    return {httpx.get(f"{url}/healthz", timeout=10).json()["pid"] for _ in range(tries)}


def _two_replicas(url: str, *, without: int | None = None, seconds: float = 120.0) -> set[int]:
    """The pids of the deployment's two replicas once both answer (``without``: once the killed one is replaced)."""
    deadline = time.monotonic() + seconds
    now: set[int] = set()
    while time.monotonic() < deadline:
        now = _pids(url, tries=12)
        if len(now) == 2 and without not in now:
            return now
        time.sleep(1)
    pytest.fail(f"the deployment did not show two replicas{f' without {without}' if without else ''}: {now}")


def _plain_answers(workspace: Path, headers: dict, bad: dict) -> tuple[list, Any, dict]:
    """The plain server's answers (in-process, SQLite history in the workspace) to ``ENTRIES`` and ``bad``, and its
    masks by relative path: the reference for the Ray Serve deployment."""
    from fastapi.testclient import TestClient

    from core.api import create_app

    plain_settings = Settings(workspace=workspace, data_root=SAMPLES, device="cpu", api_key=API_KEY)
    with TestClient(create_app(plain_settings)) as plain:
        expected = [plain.post("/v1/predict", json=entry, headers=headers) for entry in ENTRIES]
        expected_bad = plain.post("/v1/predict", json=bad, headers=headers)
    assert all(r.status_code == 200 for r in expected), [r.text for r in expected if r.status_code != 200]
    masks = {r.json()["mask_path_relative"]: Image.open(io.BytesIO(
        (plain_settings.api_out / r.json()["mask_path_relative"]).read_bytes())).copy()
        for r in expected if r.json()["task"] == "segmentation"}
    return expected, expected_bad, masks


def _answers_while_a_killed_replica_is_replaced(url: str, headers: dict) -> None:
    """Kill one replica's process: calls keep being answered while Ray starts a new one."""
    import httpx

    victim = min(_two_replicas(url))  # the second may still be starting on a loaded machine
    os.kill(victim, signal.SIGKILL)
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        after = [client.post("/v1/predict", json=ENTRIES[i % len(ENTRIES)]) for i in range(12)]
    assert [r.status_code for r in after] == [200] * len(after), [r.text for r in after]
    _two_replicas(url, without=victim)


def test_serve_on_ray_answers_like_the_plain_server(ray_cluster, workspace: Path, postgres_url: str,
                                                   tmp_path: Path):
    import httpx

    from core.history import HistoryStore

    headers = {"X-API-Key": API_KEY}
    bad = {**ENTRIES[0], "dataset_name": "NoSuchDataset"}
    expected, expected_bad, plain_masks = _plain_answers(workspace, headers, bad)

    # the same API on Ray Serve: 2 replicas of 1 CPU and 1 torch thread, PostgreSQL history, joining the cluster
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", "serve", "--backend", "ray", "--address", ray_cluster.address,
             "--replicas", "2", "--threads", "1", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=_env(workspace, UUSIC_HISTORY_URL=postgres_url, UUSIC_API_KEY=API_KEY))
    try:
        _wait_ready(url, proc, log)
        assert httpx.post(f"{url}/v1/predict", json=ENTRIES[0]).status_code == 401  # the API key still guards
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client, \
                concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda entry: client.post("/v1/predict", json=entry), ENTRIES))
            wrong = client.post("/v1/predict", json=bad)
        assert [r.status_code for r in answers] == [200] * len(ENTRIES), [r.text for r in answers]
        for got, want in zip(answers, expected, strict=True):
            got_body, want_body = got.json(), want.json()
            assert set(got_body) == set(want_body)
            assert {k: got_body.get(k) for k in STABLE} == {k: want_body.get(k) for k in STABLE}
            if want_body["task"] == "classification":
                tolerances.assert_probabilities_close(got_body["probability"], want_body["probability"])
            else:
                assert got_body["mask_url"] != want_body["mask_url"]  # the plain server's mask is kept as it was
                png = httpx.get(f"{url}{got_body['mask_url']}", headers=headers, timeout=30)
                assert png.status_code == 200
                mask = np.asarray(Image.open(io.BytesIO(png.content)))
                tolerances.assert_masks_agree(mask, plain_masks[want_body["mask_path_relative"]])
        assert wrong.status_code == expected_bad.status_code == 422
        assert wrong.json() == expected_bad.json()

        rows = HistoryStore(postgres_url).list(limit=None)
        assert sorted(r["img_path_relative"] for r in rows) == sorted(e["img_path_relative"] for e in [*ENTRIES, bad])
        assert {r["source"] for r in rows} == {"api"} and {r["batch_id"] for r in rows} == {None}
        assert sorted(r["id"] for r in rows if not r["error_type"]) == sorted(a.json()["run_id"] for a in answers)
        assert [r["error_type"] for r in rows if r["error_type"]] == ["RequestError"]

        _answers_while_a_killed_replica_is_replaced(url, headers)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_on_ray_refuses_sqlite_history_on_several_nodes(ray_cluster, workspace: Path, monkeypatch, capsys):
    from core.cli import main

    for name in [k for k in os.environ if k.startswith("UUSIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(workspace))
    assert main(["serve", "--backend", "ray", "--address", ray_cluster.address, "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on a Ray cluster of 2 nodes with the SQLite history" in err
    assert "UUSIC_HISTORY_URL" in err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--replicas", "2"])  # a Ray option without --backend ray
    assert exc.value.code == 2


def test_replicas_option_is_a_count_or_a_range():
    from core.cluster import parse_replicas
    from core.errors import ConfigError

    assert parse_replicas(None) == (1, 1) and parse_replicas("3") == (3, 3) and parse_replicas("2-6") == (2, 6)
    for bad in ("0", "6-2", "x", "1-", "-3", "2-x"):
        with pytest.raises(ConfigError, match="--replicas"):
            parse_replicas(bad)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_predict_on_ray_data_writes_the_local_backends_bytes(ray_cluster, workspace: Path, postgres_url: str,
                                                              tmp_path: Path, monkeypatch, capsys):
    from core.cli import main
    from core.history import HistoryStore

    for name in [k for k in os.environ if k.startswith("UUSIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(workspace))
    common = ["--input-json", str(SAMPLES / "ground_truth.json"), "--input-dir", str(SAMPLES), "--device", "cpu",
              "--batch-size", "8", "--threads", "1", "--no-progress"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["predict", *common, "--output-dir", str(local)]) == 0
    monkeypatch.setenv("UUSIC_HISTORY_URL", postgres_url)
    assert main(["predict", *common, "--output-dir", str(remote), "--backend", "ray", "--address",
                 ray_cluster.address, "--concurrency", "1", "--record"]) == 0
    out = capsys.readouterr().out
    assert f"done: {len(ENTRIES)} predicted" in out
    local_files, ray_files = _tree(local), _tree(remote)
    assert len(local_files) == 1 + sum(e["task"] == "segmentation" for e in ENTRIES)
    assert sorted(ray_files) == sorted(local_files)
    assert [name for name in local_files if local_files[name] != ray_files[name]] == []
    rows = HistoryStore(postgres_url).list(limit=None)
    assert len(rows) == len(ENTRIES) and {r["source"] for r in rows} == {"cli"}
    assert len({r["batch_id"] for r in rows}) == 1 and all(r["model_sha256"] for r in rows)


def test_predict_on_ray_says_what_the_cluster_lacks_instead_of_waiting(ray_cluster, workspace: Path, tmp_path: Path,
                                                                       monkeypatch, capsys):
    """More engine actors than the cluster has CPUs for (2 actors + 1 decoding CPU on 2 CPUs): after UUSIC_RAY_WAIT_S
    (a cluster it joined might grow), exit status 2 and what is missing, before any work; Ray alone would wait for
    ever."""
    from core.cli import main

    for name in [k for k in os.environ if k.startswith("UUSIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(workspace))
    monkeypatch.setenv("UUSIC_RAY_WAIT_S", "1")
    started = time.monotonic()
    code = main(["predict", "--input-json", str(SAMPLES / "ground_truth.json"), "--input-dir", str(SAMPLES),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--backend", "ray",
                 "--address", ray_cluster.address, "--concurrency", "2"])
    captured = capsys.readouterr()
    assert code == 2 and time.monotonic() - started < 30
    assert "2 CPUs of the 3 CPUs" in captured.err and "2 engine actors" in captured.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_serve_on_ray_says_what_the_cluster_lacks_for_its_replicas(ray_cluster, workspace: Path, postgres_url: str,
                                                                     monkeypatch, capsys):
    """More replicas than the cluster has CPUs for: exit status 2 naming what is missing (Serve would wait for ever
    to place them)."""
    from core.cli import main

    for name in [k for k in os.environ if k.startswith("UUSIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(workspace))
    monkeypatch.setenv("UUSIC_HISTORY_URL", postgres_url)  # two nodes: a shared history, else that is refused first
    monkeypatch.setenv("UUSIC_RAY_WAIT_S", "1")
    assert main(["serve", "--backend", "ray", "--address", ray_cluster.address, "--replicas", "3-4"]) == 2
    err = capsys.readouterr().err
    assert "2 CPUs of the 3 CPUs that serve --backend ray with 3 replicas (1 CPU each) needs" in err


def test_resources_held_by_other_work_are_waited_for_then_named(ray_cluster):
    """CPUs that exist but another actor holds: a bounded wait, then a ClusterError naming what is free; once they
    are released the same check passes at once. Too few in all where the cluster cannot grow: said at once."""
    import ray

    from core.cluster import require_resources
    from core.errors import ClusterError

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return 1

    holder = Holder.remote()  # type: ignore[attr-defined]
    ray.get(holder.ping.remote())
    try:
        with pytest.raises(ClusterError, match=r"held its resources for 1 s: only 1 CPU of the 2 CPUs"):
            require_resources({"CPU": 2.0}, "this check", wait_s=1.0, can_grow=True)
    finally:
        ray.kill(holder)
    require_resources({"CPU": 2.0}, "this check", wait_s=30.0, can_grow=True)
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"has 2 CPUs of the 3 CPUs that this check needs"):
        require_resources({"CPU": 3.0}, "this check", wait_s=30.0, can_grow=False)
    assert time.monotonic() - started < 5
