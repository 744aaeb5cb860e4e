"""One settings object for the whole project: defaults overridden by ``UUSIC_*`` environment variables.

``Settings(...)`` built in code (or a test) takes only its defaults and the keyword arguments given: it never reads
the environment. ``Settings.from_env()`` (or :func:`get_settings`) reads ``os.environ`` (or a given mapping); an empty
variable means "the default", and a value that cannot be used raises :class:`~core.errors.ConfigError` naming the
variable, e.g. ``UUSIC_MAX_UPLOAD_MB: expected a positive integer, got 'abc'``.

=========================  =====================  ===============================================================
variable                   field                  meaning
=========================  =====================  ===============================================================
UUSIC_WORKSPACE            workspace              api_in/, api_out/, history.sqlite3 (default ./workspace)
UUSIC_DATA_ROOT            data_root              dataset images the dashboard and API may read
UUSIC_DEVICE               device                 auto | cpu | cuda | cuda:N
UUSIC_API_URL              api_url                dashboard talks to this API instead of a local engine
UUSIC_API_KEY              api_key                X-API-Key the API requires / the client sends
UUSIC_WEIGHTS_DIR          weights_dir            folder holding models.json and the weights
UUSIC_MODEL                default_model          model name in models.json (default: its first entry)
UUSIC_AMP                  amp                    bf16 autocast on CUDA (1/true/yes/on, 0/false/no/off)
UUSIC_BACKEND              backend                CPU inference backend: auto | torch | torch-compile | openvino
UUSIC_PRECISION            precision              CPU inference precision: fp32 | bf16 | int8 (int8: openvino + nncf)
UUSIC_CACHE_DIR            cache_dir              converted models (default <workspace>/cache/backends)
UUSIC_CORS_ORIGINS         cors_origins           comma-separated origins the API allows
UUSIC_ALLOWED_HOSTS        allowed_hosts          comma-separated Host names the API answers (``*``: any host)
UUSIC_MAX_CONNECTIONS      max_connections        ``serve``: concurrent connections + requests before 503
UUSIC_BODY_TIMEOUT_S       body_timeout_s         seconds a request body may stall between two reads (then 408)
UUSIC_MAX_IMAGE_PIXELS     max_image_pixels       larger images are refused (decompression bombs)
UUSIC_MAX_IMAGE_SIDE       max_image_side         longest image side accepted
UUSIC_MAX_UPLOAD_MB        max_upload_mb          upload size limit
UUSIC_MAX_JSON_BYTES       max_json_bytes         request body limit for JSON routes
UUSIC_MAX_FRAMES           max_frames             cine: most frames decoded / analysed per call (videos: read up to)
UUSIC_MAX_DECODED_MB       max_decoded_mb         cine: most decoded RGB megabytes per call
UUSIC_HEAD_TIMEOUT_S       head_timeout_s         ``serve``: seconds a connection may take to send a request head
UUSIC_KEEP_IDENTITY        keep_identity          keep DICOM / video uploads as uploaded (default: de-identified)
UUSIC_LANGUAGE             language               dashboard language (zh | en)
UUSIC_TIMEZONE             timezone               IANA zone History shows times in (default: TZ, else the server's)
UUSIC_HISTORY_URL          history_url            SQLAlchemy URL of the history database (default: SQLite file)
UUSIC_MICRO_BATCH          micro_batch            auto | on | off: group concurrent API requests (auto = CUDA only)
UUSIC_MAX_BATCH_SIZE       max_batch_size         most requests in one grouped forward pass
UUSIC_BATCH_WAIT_MS        batch_wait_ms          how long the first request waits for company
UUSIC_RECORD_CLI           record_cli_runs        CLI ``predict`` also records its runs in the history
UUSIC_RETENTION_DAYS       retention_days         ``workspace gc`` removes inputs and masks not used for N days
UUSIC_RETENTION_GB         retention_gb           ``workspace gc`` keeps api_in/ + api_out/ under N GB, oldest out first
UUSIC_RETENTION_GRACE_S    retention_grace_s      ``workspace gc`` never removes a file used (or written) this recently
UUSIC_TTA                  tta                    test-time augmentation: auto | on | off (auto: core.tta.TTA_AUTO)
UUSIC_TTA_VIEWS            tta_views              TTA views, e.g. identity,hflip,rot-10,rot+10 (also vflip, rot90)
UUSIC_REFUSE_OOD           refuse_ood             refuse (422) images the organ recogniser finds out of distribution
UUSIC_RAY_WAIT_S           ray_wait_s             Ray backends: seconds to wait for the CPUs / GPUs a run needs
UUSIC_DICOMWEB_URL         dicomweb_url           DICOMweb root of the PACS (core.pacs), e.g. http://pacs:8042/dicom-web
UUSIC_DICOMWEB_USER        dicomweb_user          HTTP basic user for the PACS (with UUSIC_DICOMWEB_PASSWORD)
UUSIC_DICOMWEB_PASSWORD    dicomweb_password      HTTP basic password for the PACS (never shown)
UUSIC_DICOMWEB_TOKEN       dicomweb_token         bearer token for the PACS instead of user + password (never shown)
UUSIC_DICOMWEB_TIMEOUT_S   dicomweb_timeout_s     seconds one PACS call may take (connect, each read, a whole retrieve)
=========================  =====================  ===============================================================
"""

from __future__ import annotations

import hashlib
import math
import os
import types
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError
from core.redact import MASK, redact_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLES = PROJECT_ROOT / "samples"
WEIGHTS_DIR = PROJECT_ROOT / "weights"

ENV_PREFIX = "UUSIC_"
# Fields whose variable is not simply ENV_PREFIX + NAME; fields listed with None are never read from the environment.
_ENV_NAME_OVERRIDES: dict[str, str | None] = {
    "default_model": "UUSIC_MODEL",
    "record_cli_runs": "UUSIC_RECORD_CLI",
    "extra": None,
}
_SECRET_FIELDS = ("dicomweb_password", "dicomweb_token")  # never in a message, a repr or a log
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# The environment that Settings.from_env is reading right now, per thread / task; None = direct construction.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("uusic_settings_environ", default=None)


def env_name(field_name: str) -> str | None:
    """The environment variable that sets ``field_name`` (None for fields the environment cannot set)."""
    if field_name in _ENV_NAME_OVERRIDES:
        return _ENV_NAME_OVERRIDES[field_name]
    return ENV_PREFIX + field_name.upper()


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _parse_env_value(field_name: str, annotation: Any, raw: str) -> Any:
    """``raw`` (non-empty, stripped) converted to the field's type; ConfigError naming the variable if it can't be."""
    name = env_name(field_name)
    kind = _strip_optional(annotation)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name}: expected {expected}, got {_shown(field_name, raw)}", field=field_name)

    if kind is bool:
        word = raw.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise bad("one of 1/true/yes/on or 0/false/no/off")
    if kind is int:
        try:
            number = int(raw)
        except ValueError:
            raise bad("an integer") from None
        if number < 1:  # every integer setting is a limit or a size: 0 would lock everyone out
            raise bad("a positive integer")
        return number
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value) or value < 0:
            raise bad("a non-negative number")
        return value
    if kind is Path:
        return Path(raw).expanduser().resolve()
    if get_origin(kind) is Literal:
        choices = [str(choice) for choice in get_args(kind)]
        word = raw.lower()
        if word in choices:
            return word
        if set(choices) == {"auto", "on", "off"} and (word in _TRUE or word in _FALSE):
            return "on" if word in _TRUE else "off"
        raise bad("one of " + ", ".join(choices))
    if get_origin(kind) is tuple:
        return _split_list(raw)
    if field_name == "history_url" and "://" not in raw:
        raise bad("a SQLAlchemy URL such as postgresql+psycopg://user:pass@host/db or sqlite:///path")
    return raw


def _shown(field_name: str, value: Any) -> str:
    """``value`` as an error message may show it: never the API key, never what may be a password in a URL."""
    if field_name == "history_url" and value is not None:
        shown = redact_url(str(value))
        if shown != MASK:
            return repr(shown)
    if field_name in ("api_key", "history_url") or field_name in _SECRET_FIELDS:
        return "a value that is not shown (it may hold a secret)"
    return repr(value)


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


class _UUSICEnvSource(PydanticBaseSettingsSource):
    """The ``UUSIC_*`` variables of the mapping Settings.from_env is reading (nothing outside from_env)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        environ = _ENVIRON.get()
        name = env_name(field_name)
        if environ is None or name is None:
            return None, field_name, False
        raw = environ.get(name)
        if raw is None or not raw.strip():
            if _strip_optional(field.annotation) is Path and isinstance(field.default, Path):
                # from_env resolves every path, defaults too (a relative workspace is relative to the cwd *now*)
                return field.default.expanduser().resolve(), field_name, False
            return None, field_name, False  # unset or empty: the default
        return _parse_env_value(field_name, field.annotation, raw.strip()), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


def _describe(exc: ValidationError, from_env: bool) -> str:
    parts = []
    for error in exc.errors():
        field_name = str(error["loc"][0]) if error["loc"] else "settings"
        label = (env_name(field_name) or field_name) if from_env else field_name
        message = str(error["msg"]).removeprefix("Value error, ")  # a validator's own words, without pydantic's tag
        parts.append(f"{label}: {message}, got {_shown(field_name, error.get('input'))}")
    return "; ".join(parts)


class Settings(BaseSettings):
    """Runtime configuration. Build with :meth:`from_env`; derive variants with :meth:`with_`.

    Direct construction (``Settings(workspace=..., device="cpu")``) uses only the defaults and the arguments given;
    only :meth:`from_env` reads ``UUSIC_*`` variables. Instances are immutable.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True, env_prefix=ENV_PREFIX)

    workspace: Path = Path("workspace")
    data_root: Path = BUNDLED_SAMPLES
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    api_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)  # never in repr (repr is used as a cache key and in logs)
    weights_dir: Path = WEIGHTS_DIR
    default_model: str | None = None  # name in weights/models.json; None = first entry
    amp: bool = False  # bf16 autocast on CUDA
    # CPU inference (core.models.backends); a manifest entry's "backend" / "precision" override these per model.
    # auto = the fastest backend whose outputs match fp32 eager (openvino when installed, else torch).
    backend: Literal["auto", "torch", "torch-compile", "openvino"] = "auto"
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    cache_dir: Path | None = None  # converted models; None = <workspace>/cache/backends
    cors_origins: tuple[str, ...] = ("http://localhost:8501", "http://127.0.0.1:8501")
    # Host names (the Host header, port excluded) the API answers; others get 400 (DNS rebinding). "*" = any host;
    # "*.example.org" = its subdomains. "testserver" is what Starlette's TestClient sends.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1", "testserver")
    max_connections: int = Field(default=64, ge=1)  # `serve`: uvicorn limit_concurrency
    body_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)  # stall between two body reads → 408
    # Limits. From the environment they must be >= 1; code (tests) may set 0 to refuse everything.
    max_image_pixels: int = Field(default=64_000_000, ge=0)  # larger images are refused (decompression bombs)
    max_image_side: int = Field(default=16_384, ge=0)
    max_upload_mb: int = Field(default=50, ge=0)
    max_json_bytes: int = Field(default=1_000_000, ge=0)
    # Cine loops (core.cine): frames one call may decode / analyse, and their total decoded RGB size
    max_frames: int = Field(default=300, ge=0)
    max_decoded_mb: int = Field(default=1024, ge=0)
    language: str = "zh"
    timezone: str | None = None  # IANA name, e.g. Asia/Shanghai; None: TZ, else the server's local zone
    history_url: str | None = None  # SQLAlchemy URL; None = the SQLite file <workspace>/history.sqlite3
    micro_batch: Literal["auto", "on", "off"] = "auto"  # group concurrent API requests; auto = on CUDA only
    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_ms: float = Field(default=4.0, ge=0, allow_inf_nan=False)
    record_cli_runs: bool = False  # CLI predict records its runs in the history
    keep_identity: bool = False  # uploads' DICOM headers / video metadata kept as uploaded (core.deidentify)
    head_timeout_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)  # core.api.head_deadline
    # Retention of api_in/ and api_out/ (core.workspace, `python -m core workspace gc`); None = keep forever.
    retention_days: int | None = Field(default=None, ge=1)
    retention_gb: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # Files written or used less than this many seconds ago (an upload not yet analysed, a run in flight) are spared
    retention_grace_s: float = Field(default=3600.0, ge=0, allow_inf_nan=False)
    # Test-time augmentation (core.tta): a request's "tta" wins; auto = the measured CPU decision (docs/PERFORMANCE.md)
    tta: Literal["auto", "on", "off"] = "auto"
    tta_views: str = "identity,hflip,rot-10,rot+10"
    refuse_ood: bool = False  # core.recognition: out-of-distribution inputs refused (422) instead of analysed
    # Ray backends (core.cluster.require_resources): how long a run waits for resources other work holds, or for a
    # cluster it joined to grow, before it says what is missing (a local Ray it started cannot grow: said at once)
    ray_wait_s: float = Field(default=60.0, ge=0, le=86_400, allow_inf_nan=False)
    # PACS over DICOMweb (core.pacs): the root URL and optional credentials (basic, or a bearer token)
    dicomweb_url: str | None = None
    dicomweb_user: str | None = None
    dicomweb_password: str | None = Field(default=None, repr=False)
    dicomweb_token: str | None = Field(default=None, repr=False)
    dicomweb_timeout_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    extra: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, from_env=_ENVIRON.get() is not None)) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments first, then UUSIC_* variables, and those only inside from_env (see _ENVIRON).
        # pydantic-settings' own env/.env/secrets sources are left out on purpose: direct construction reads nothing.
        return init_settings, _UUSICEnvSource(settings_cls)

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value) if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if "*" in host[1:] or (host.startswith("*") and host != "*" and not host.startswith("*.")):
                raise ValueError(f"{host!r} is not a host name; wildcards are '*' (any) or '*.example.org'")
            if "/" in host or " " in host:
                raise ValueError(f"{host!r} is not a host name (no scheme, path or spaces; the port is not needed)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value is None or not value.strip():
            return None
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone name such as Asia/Shanghai") from None
        return value.strip()

    @field_validator("tta_views")
    @classmethod
    def _tta_views_parse(cls, value: str) -> str:
        from core.tta import parse_views

        parse_views(value)  # ValueError with the bad view's name
        return value

    @field_validator("history_url")
    @classmethod
    def _history_url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a SQLAlchemy URL such as postgresql+psycopg://user:pass@host/db")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by the ``UUSIC_*`` variables of ``environ`` (default ``os.environ``)."""
        token = _ENVIRON.set(os.environ if environ is None else environ)
        try:
            return cls()
        finally:
            _ENVIRON.reset(token)

    @staticmethod
    def env_name(field_name: str) -> str | None:
        """The environment variable that sets ``field_name`` (None for ``extra``)."""
        return env_name(field_name)

    def with_(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (unknown names and bad values raise ConfigError)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        return type(self)(**values)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name in ("history_url", "dicomweb_url") and value else value)

    def cache_key(self) -> str:
        """A stable string that differs whenever any setting differs, secrets included (as hashes)."""

        def digest(secret: str | None) -> str:
            return hashlib.sha256(secret.encode()).hexdigest()[:16] if secret is not None else "-"

        return (f"{self!r}|api_key={digest(self.api_key)}|history_url={digest(self.history_url)}"
                f"|dicomweb={digest(self.dicomweb_password)},{digest(self.dicomweb_token)},{digest(self.dicomweb_url)}")

    def server_folders(self) -> tuple[Path, ...]:
        """The deployment's own folders, which no message to a person names (:func:`core.redact.scrub_paths`)."""
        return (self.weights_dir, self.manifest_path.parent, self.workspace, self.data_root)

    @property
    def api_in(self) -> Path:
        return self.workspace / "api_in"

    @property
    def api_out(self) -> Path:
        return self.workspace / "api_out"

    @property
    def history_db(self) -> Path:
        """The SQLite history file used when ``history_url`` is not set."""
        return self.workspace / "history.sqlite3"

    @property
    def history_database_url(self) -> str:
        """``history_url``, or the SQLAlchemy URL of :attr:`history_db`."""
        return self.history_url or f"sqlite:///{self.history_db}"

    @property
    def manifest_path(self) -> Path:
        return self.weights_dir / "models.json"

    def ensure_workspace(self) -> None:
        for folder in (self.workspace, self.api_in, self.api_out):
            folder.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    """Settings from the current environment (cheap; call again after changing env vars)."""
    return Settings.from_env()
