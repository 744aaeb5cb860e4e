"""Settings: defaults, every UUSIC_* variable, empty = default, bad values name their variable, no env in code."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import BUNDLED_SAMPLES, PROJECT_ROOT, WEIGHTS_DIR, Settings, get_settings

ALL_VARS = [
    "UUSIC_WORKSPACE", "UUSIC_DATA_ROOT", "UUSIC_DEVICE", "UUSIC_API_URL", "UUSIC_API_KEY", "UUSIC_WEIGHTS_DIR",
    "UUSIC_MODEL", "UUSIC_AMP", "UUSIC_CORS_ORIGINS", "UUSIC_MAX_IMAGE_PIXELS", "UUSIC_MAX_IMAGE_SIDE",
    "UUSIC_MAX_UPLOAD_MB", "UUSIC_MAX_JSON_BYTES", "UUSIC_LANGUAGE", "UUSIC_HISTORY_URL", "UUSIC_MICRO_BATCH",
    "UUSIC_MAX_BATCH_SIZE", "UUSIC_BATCH_WAIT_MS", "UUSIC_RECORD_CLI", "UUSIC_RETENTION_DAYS", "UUSIC_RETENTION_GB",
    "UUSIC_ALLOWED_HOSTS", "UUSIC_MAX_CONNECTIONS", "UUSIC_BODY_TIMEOUT_S",
    "UUSIC_BACKEND", "UUSIC_PRECISION", "UUSIC_CACHE_DIR", "UUSIC_MAX_FRAMES", "UUSIC_MAX_DECODED_MB", "UUSIC_TTA",
    "UUSIC_TTA_VIEWS", "UUSIC_TIMEZONE", "UUSIC_RETENTION_GRACE_S",
    "UUSIC_HEAD_TIMEOUT_S", "UUSIC_KEEP_IDENTITY",
    "UUSIC_DICOMWEB_URL", "UUSIC_DICOMWEB_USER", "UUSIC_DICOMWEB_PASSWORD", "UUSIC_DICOMWEB_TOKEN",
    "UUSIC_DICOMWEB_TIMEOUT_S", "UUSIC_REFUSE_OOD", "UUSIC_RAY_WAIT_S",
]


@pytest.fixture
def clean_env(monkeypatch):
    """No UUSIC_* variable from the machine running the tests leaks in."""
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults():
    settings = Settings()
    assert settings.workspace == Path("workspace")
    assert settings.data_root == BUNDLED_SAMPLES and settings.weights_dir == WEIGHTS_DIR
    assert BUNDLED_SAMPLES == PROJECT_ROOT / "samples" and WEIGHTS_DIR == PROJECT_ROOT / "weights"
    assert settings.device == "auto" and settings.language == "zh"
    assert settings.api_url is None and settings.api_key is None and settings.default_model is None
    assert settings.amp is False and settings.record_cli_runs is False
    assert settings.cors_origins == ("http://localhost:8501", "http://127.0.0.1:8501")
    assert (settings.max_image_pixels, settings.max_image_side) == (64_000_000, 16_384)
    assert (settings.max_upload_mb, settings.max_json_bytes) == (50, 1_000_000)
    assert settings.history_url is None
    assert settings.micro_batch == "auto" and settings.max_batch_size == 8 and settings.batch_wait_ms == 4.0
    assert settings.extra == {}


def test_from_env_with_nothing_set_is_the_defaults_with_paths_resolved():
    settings = Settings.from_env({})
    assert settings.workspace == Path("workspace").resolve()
    assert settings.with_(workspace=Path("workspace")) == Settings()


def test_every_variable_is_mapped(tmp_path):
    env = {
        "UUSIC_WORKSPACE": str(tmp_path / "ws"),
        "UUSIC_DATA_ROOT": str(tmp_path / "data"),
        "UUSIC_DEVICE": "cuda:1",
        "UUSIC_API_URL": "http://api.local:8000",
        "UUSIC_API_KEY": "s3cret",
        "UUSIC_WEIGHTS_DIR": str(tmp_path / "weights"),
        "UUSIC_MODEL": "uusic_omni",
        "UUSIC_AMP": "on",
        "UUSIC_CORS_ORIGINS": "http://a:1,http://b:2",
        "UUSIC_MAX_IMAGE_PIXELS": "1000",
        "UUSIC_MAX_IMAGE_SIDE": "99",
        "UUSIC_MAX_UPLOAD_MB": "3",
        "UUSIC_MAX_JSON_BYTES": "4096",
        "UUSIC_LANGUAGE": "en",
        "UUSIC_HISTORY_URL": "postgresql+psycopg://user:pass@db.local/uusic",
        "UUSIC_MICRO_BATCH": "off",
        "UUSIC_MAX_BATCH_SIZE": "16",
        "UUSIC_BATCH_WAIT_MS": "2.5",
        "UUSIC_RECORD_CLI": "yes",
    }
    settings = Settings.from_env(env)
    assert settings.workspace == tmp_path / "ws" and settings.data_root == tmp_path / "data"
    assert settings.weights_dir == tmp_path / "weights"
    assert settings.device == "cuda:1" and settings.api_url == "http://api.local:8000" and settings.api_key == "s3cret"
    assert settings.default_model == "uusic_omni" and settings.amp is True
    assert settings.cors_origins == ("http://a:1", "http://b:2")
    assert (settings.max_image_pixels, settings.max_image_side, settings.max_upload_mb, settings.max_json_bytes) == (
        1000, 99, 3, 4096)
    assert settings.language == "en"
    assert settings.history_url == "postgresql+psycopg://user:pass@db.local/uusic"
    assert settings.micro_batch == "off" and settings.max_batch_size == 16 and settings.batch_wait_ms == 2.5
    assert settings.record_cli_runs is True
    assert {Settings.env_name(name) for name in Settings.model_fields} - {None} == set(ALL_VARS)


def test_from_env_reads_os_environ(clean_env, tmp_path):
    clean_env.setenv("UUSIC_WORKSPACE", str(tmp_path / "w"))
    clean_env.setenv("UUSIC_MAX_UPLOAD_MB", "7")
    assert Settings.from_env().workspace == tmp_path / "w"
    assert get_settings().max_upload_mb == 7


def test_empty_values_mean_default():
    env = dict.fromkeys(ALL_VARS, "")
    env["UUSIC_DEVICE"] = "   "
    assert Settings.from_env(env) == Settings.from_env({})


@pytest.mark.parametrize(("word", "expected"), [
    ("1", True), ("true", True), ("YES", True), ("On", True), ("0", False), ("false", False), ("no", False),
    ("OFF", False),
])
def test_boolean_words(word, expected):
    assert Settings.from_env({"UUSIC_AMP": word}).amp is expected
    assert Settings.from_env({"UUSIC_RECORD_CLI": word}).record_cli_runs is expected


def test_micro_batch_words():
    assert Settings.from_env({"UUSIC_MICRO_BATCH": "AUTO"}).micro_batch == "auto"
    assert Settings.from_env({"UUSIC_MICRO_BATCH": "on"}).micro_batch == "on"
    assert Settings.from_env({"UUSIC_MICRO_BATCH": "true"}).micro_batch == "on"
    assert Settings.from_env({"UUSIC_MICRO_BATCH": "0"}).micro_batch == "off"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("UUSIC_MAX_UPLOAD_MB", "abc", "UUSIC_MAX_UPLOAD_MB: expected an integer, got 'abc'"),
    ("UUSIC_MAX_UPLOAD_MB", "0", "UUSIC_MAX_UPLOAD_MB: expected a positive integer, got '0'"),
    ("UUSIC_MAX_IMAGE_PIXELS", "-5", "UUSIC_MAX_IMAGE_PIXELS: expected a positive integer"),
    ("UUSIC_MAX_IMAGE_SIDE", "1.5", "UUSIC_MAX_IMAGE_SIDE: expected an integer"),
    ("UUSIC_MAX_JSON_BYTES", "0", "UUSIC_MAX_JSON_BYTES: expected a positive integer"),
    ("UUSIC_MAX_BATCH_SIZE", "0", "UUSIC_MAX_BATCH_SIZE: expected a positive integer"),
    ("UUSIC_BATCH_WAIT_MS", "soon", "UUSIC_BATCH_WAIT_MS: expected a number, got 'soon'"),
    ("UUSIC_BATCH_WAIT_MS", "-1", "UUSIC_BATCH_WAIT_MS: expected a non-negative number"),
    ("UUSIC_AMP", "maybe", "UUSIC_AMP: expected one of 1/true/yes/on or 0/false/no/off, got 'maybe'"),
    ("UUSIC_RECORD_CLI", "2", "UUSIC_RECORD_CLI: expected one of"),
    ("UUSIC_MICRO_BATCH", "sometimes", "UUSIC_MICRO_BATCH: expected one of auto, on, off, got 'sometimes'"),
    ("UUSIC_HISTORY_URL", "history.db", "UUSIC_HISTORY_URL: expected a SQLAlchemy URL"),
    ("UUSIC_TIMEZONE", "Mars/Olympus",
     "UUSIC_TIMEZONE: expected an IANA time zone name such as Asia/Shanghai, got 'Mars/Olympus'"),
])
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert str(info.value).startswith(message)
    assert info.value.status_code == 500


def test_bad_history_url_does_not_echo_what_may_be_a_password():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"UUSIC_HISTORY_URL": "user:hunter2@db/uusic"})
    assert "hunter2" not in str(info.value) and "UUSIC_HISTORY_URL" in str(info.value)


def test_direct_construction_ignores_the_environment(clean_env, tmp_path):
    clean_env.setenv("UUSIC_WORKSPACE", str(tmp_path / "from-env"))
    clean_env.setenv("UUSIC_DEVICE", "cuda")
    clean_env.setenv("UUSIC_API_KEY", "env-key")
    clean_env.setenv("UUSIC_MAX_UPLOAD_MB", "not-a-number")  # would fail if read
    settings = Settings(workspace=tmp_path / "given")
    assert settings.workspace == tmp_path / "given" and settings.device == "auto" and settings.api_key is None
    assert settings.max_upload_mb == 50
    assert Settings() == Settings(workspace=Path("workspace"))
    assert settings.with_(device="cpu").device == "cpu"  # with_ does not read it either


def test_direct_construction_keeps_paths_as_given():
    settings = Settings(workspace=Path("rel/ws"), data_root="~/data")
    assert settings.workspace == Path("rel/ws") and settings.data_root == Path("~/data")


def test_paths_from_env_are_expanded_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = Settings.from_env({"UUSIC_WORKSPACE": "ws/../ws2", "UUSIC_DATA_ROOT": "~/data",
                                  "UUSIC_WEIGHTS_DIR": "w"})
    assert settings.workspace == (tmp_path / "ws2").resolve()
    assert settings.data_root == (tmp_path / "home" / "data").resolve()
    assert settings.weights_dir == (tmp_path / "w").resolve()
    assert all(path.is_absolute() for path in (settings.workspace, settings.data_root, settings.weights_dir))


def test_list_parsing():
    assert Settings.from_env({"UUSIC_CORS_ORIGINS": " http://a , ,http://b,"}).cors_origins == ("http://a", "http://b")
    assert Settings.from_env({"UUSIC_CORS_ORIGINS": "http://only"}).cors_origins == ("http://only",)
    assert Settings(cors_origins=["x", "y"]).cors_origins == ("x", "y")
    assert Settings(cors_origins="x, y").cors_origins == ("x", "y")


def test_with_returns_a_validated_copy(tmp_path):
    base = Settings(workspace=tmp_path)
    changed = base.with_(max_upload_mb=1, api_key="k", cors_origins=("http://dash.local:8501",))
    assert changed.max_upload_mb == 1 and changed.api_key == "k" and changed.workspace == tmp_path
    assert base.max_upload_mb == 50 and base.api_key is None  # the original is untouched
    assert base.with_(max_upload_mb=0).max_upload_mb == 0  # code may set 0 (refuse every upload); env may not
    with pytest.raises(ConfigError, match="max_upload_mb"):
        base.with_(max_upload_mb="lots")
    with pytest.raises(ConfigError, match="max_batch_size"):
        base.with_(max_batch_size=0)
    with pytest.raises(ConfigError, match="micro_batch"):
        base.with_(micro_batch="sometimes")
    with pytest.raises(ConfigError, match="history_url"):
        base.with_(history_url="history.db")
    with pytest.raises(ConfigError, match="no_such_setting"):
        base.with_(no_such_setting=1)


def test_frozen():
    settings = Settings()
    with pytest.raises(ValueError):
        settings.device = "cpu"  # type: ignore[misc]


def test_derived_paths(tmp_path):
    settings = Settings(workspace=tmp_path / "ws", weights_dir=tmp_path / "weights")
    assert settings.api_in == tmp_path / "ws" / "api_in" and settings.api_out == tmp_path / "ws" / "api_out"
    assert settings.history_db == tmp_path / "ws" / "history.sqlite3"
    assert settings.history_database_url == f"sqlite:///{tmp_path / 'ws' / 'history.sqlite3'}"
    assert settings.with_(history_url="postgresql+psycopg://u@h/db").history_database_url == "postgresql+psycopg://u@h/db"
    assert settings.manifest_path == tmp_path / "weights" / "models.json"
    settings.ensure_workspace()
    assert settings.api_in.is_dir() and settings.api_out.is_dir()


def test_repr_is_deterministic_and_hides_secrets():
    settings = Settings(api_key="s3cret", history_url="postgresql+psycopg://user:hunter2@db/uusic")
    text = repr(settings)
    assert text == repr(Settings(api_key="s3cret", history_url="postgresql+psycopg://user:hunter2@db/uusic"))
    assert "s3cret" not in text and "hunter2" not in text and "api_key" not in text
    assert "postgresql+psycopg://user:***@db/uusic" in text
    assert "s3cret" not in str(settings)
    # cache_key tells apart what repr hides, without showing it
    key = settings.cache_key()
    assert "s3cret" not in key and "hunter2" not in key
    assert key != settings.with_(api_key="other").cache_key()
    assert key != settings.with_(history_url="postgresql+psycopg://user:other@db/uusic").cache_key()
    assert key == Settings(api_key="s3cret", history_url="postgresql+psycopg://user:hunter2@db/uusic").cache_key()


def test_from_env_is_thread_safe(tmp_path):
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(50):
                settings = Settings.from_env({"UUSIC_MAX_UPLOAD_MB": str(index + 1)})
                assert settings.max_upload_mb == index + 1
                assert Settings().max_upload_mb == 50  # direct construction never sees another thread's env
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_timezone_setting_is_read_and_checked():
    assert Settings.from_env({"UUSIC_TIMEZONE": " Asia/Shanghai "}).timezone == "Asia/Shanghai"
    assert Settings.from_env({}).timezone is None
