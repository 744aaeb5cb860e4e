"""One settings object for the whole project: defaults overridden by ``UUSIC_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLES = PROJECT_ROOT / "samples"
WEIGHTS_DIR = PROJECT_ROOT / "weights"


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None or value.strip() == "":
        return default
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Build with :meth:`from_env`; derive variants with :meth:`with_`."""

    workspace: Path = Path("workspace")
    data_root: Path = BUNDLED_SAMPLES
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    api_url: str | None = None
    api_key: str | None = None
    weights_dir: Path = WEIGHTS_DIR
    default_model: str | None = None  # name in weights/models.json; None = first entry
    amp: bool = False  # bf16 autocast on CUDA
    cors_origins: tuple[str, ...] = ("http://localhost:8501", "http://127.0.0.1:8501")
    max_image_pixels: int = 64_000_000  # larger images are refused (decompression bombs)
    max_image_side: int = 16_384
    max_upload_mb: int = 50
    max_json_bytes: int = 1_000_000
    language: str = "zh"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        base = cls()
        workspace = Path(env.get("UUSIC_WORKSPACE") or base.workspace)
        return cls(
            workspace=workspace.expanduser().resolve(),
            data_root=Path(env.get("UUSIC_DATA_ROOT") or base.data_root).expanduser().resolve(),
            device=env.get("UUSIC_DEVICE") or base.device,
            api_url=(env.get("UUSIC_API_URL") or None),
            api_key=(env.get("UUSIC_API_KEY") or None),
            weights_dir=Path(env.get("UUSIC_WEIGHTS_DIR") or base.weights_dir).expanduser().resolve(),
            default_model=env.get("UUSIC_MODEL") or None,
            amp=_env_bool(env.get("UUSIC_AMP"), base.amp),
            cors_origins=_env_list(env.get("UUSIC_CORS_ORIGINS"), base.cors_origins),
            max_image_pixels=int(env.get("UUSIC_MAX_IMAGE_PIXELS") or base.max_image_pixels),
            max_upload_mb=int(env.get("UUSIC_MAX_UPLOAD_MB") or base.max_upload_mb),
            language=env.get("UUSIC_LANGUAGE") or base.language,
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def api_in(self) -> Path:
        return self.workspace / "api_in"

    @property
    def api_out(self) -> Path:
        return self.workspace / "api_out"

    @property
    def history_db(self) -> Path:
        return self.workspace / "history.sqlite3"

    @property
    def manifest_path(self) -> Path:
        return self.weights_dir / "models.json"

    def ensure_workspace(self) -> None:
        for folder in (self.workspace, self.api_in, self.api_out):
            folder.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    """Settings from the current environment (cheap; call again after changing env vars)."""
    return Settings.from_env()
