"""The models of a deployment: loaded once each, and a request routed to the one that serves its dataset.

Every manifest entry (``weights/models.json``) serves the datasets it lists (none listed: all). A request goes to
the model it names, else to the default model (``UUSIC_MODEL``, else the first entry) when that one serves its
(task, dataset), else to the first entry that does. A pool built around one given engine (the CLI's ad-hoc
weights, tests) sends everything to that engine.

The loaded models live in one place, :data:`LOADED`: one engine per settings key (:meth:`Settings.cache_key`) and
model name, built once under one lock and shared by every pool of those settings (a service's analyses, batches,
cines, the dashboard's and the API's). :meth:`ModelPool.release` lets them go. A model is served at once: when its
CPU conversion is not cached yet, the engine answers with eager torch while it converts in the background
(:mod:`core.models.backends`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import catalog
from core.errors import ModelUnavailableError, NoModelError, UUSICError
from core.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from core.batching import MicroBatcher
    from core.engine import Engine
    from core.models.base import ModelSpec


class LoadedModels:
    """The process's loaded models: one engine per (settings key, model name), built once under one build lock;
    reading what is loaded (``/healthz``) takes only the short lock of the table, never waits for a build."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, str], Engine] = {}
        self._lock = threading.RLock()  # the table
        self._build_lock = threading.RLock()  # one build at a time (held for seconds: torch import, conversion)

    def get(self, key: str, name: str, build: Callable[[], Engine]) -> Engine:
        """The engine of ``name`` under the settings ``key``, built by ``build()`` the first time."""
        engine = self._engines.get((key, name))  # loaded: no wait while another model is being built
        if engine is not None:
            return engine
        with self._build_lock:
            engine = self._engines.get((key, name))
            if engine is None:
                engine = build()
                with self._lock:
                    self._engines[(key, name)] = engine
            return engine

    def of(self, key: str) -> dict[str, Engine]:
        """The engines loaded for the settings ``key``, by model name."""
        with self._lock:
            return {name: engine for (k, name), engine in self._engines.items() if k == key}

    def entries(self) -> list[tuple[str, str]]:
        """Every loaded (settings key, model name)."""
        with self._lock:
            return list(self._engines)

    def release(self, key: str | None = None) -> int:
        """Let go of the engines of settings ``key`` (None: all); returns how many. Their memory goes when the last
        request using them ends."""
        with self._lock:
            gone = [k for k in self._engines if key is None or k[0] == key]
            for k in gone:
                del self._engines[k]
            return len(gone)


LOADED = LoadedModels()  # the one registry of loaded models in this process


class ModelPool:
    """Engines by model name for one settings key, loaded on first use into :data:`LOADED` (shared by every pool of
    the same settings); load errors remembered per model (for ``/healthz``). ``engine``: serve only that one
    (kept by this pool, not shared)."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None, model: str | None = None,
                 micro_batch: bool | None = None, models: LoadedModels | None = None):
        self.settings = settings
        self.key = settings.cache_key()
        self._fixed = engine
        self._wanted_default = model
        self._micro_batch = micro_batch
        self._models = models if models is not None else LOADED
        self._errors: dict[str, str] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._specs: list[ModelSpec] | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ the manifest
    def specs(self) -> list[ModelSpec]:
        """The manifest's entries (read once); a broken manifest is a 503 :class:`ModelUnavailableError`."""
        if self._fixed is not None:
            return [self._fixed.spec]
        if self._specs is None:
            from core.models import registry

            try:
                self._specs = registry.list_models(self.settings)
            except UUSICError as exc:
                self._errors["manifest"] = self._public(exc.message)
                raise ModelUnavailableError(f"the model could not be loaded: {self._errors['manifest']}") from None
        return self._specs

    def default_name(self) -> str:
        if self._fixed is not None:
            return self._fixed.spec.name
        specs = self.specs()
        wanted = self._wanted_default or self.settings.default_model
        if not specs:
            raise ModelUnavailableError("the model could not be loaded: the model manifest lists no models")
        if wanted is not None and wanted not in {s.name for s in specs}:
            known = ", ".join(s.name for s in specs)
            raise ModelUnavailableError(f"the model could not be loaded: no model named {wanted!r}; known: {known}")
        return wanted or specs[0].name

    def served_by(self, task: str, dataset_name: str) -> list[str]:
        """Names of the models that serve ``(task, dataset_name)``, the default model first."""
        specs = self.specs()
        default = self.default_name()
        ordered = sorted(specs, key=lambda s: s.name != default)
        return [s.name for s in ordered if catalog.serves(catalog.served_keys(s.datasets), task, dataset_name)]

    # ------------------------------------------------------------------------------------------ engines
    def engine(self, name: str | None = None) -> Engine:
        """The engine of model ``name`` (default model: None), loaded on first use."""
        name = name or self.default_name()
        if self._fixed is not None:
            if name == self._fixed.spec.name:
                return self._fixed
            raise NoModelError(f"no model named {name!r} here; this process serves {self._fixed.spec.name!r}",
                               field="model")
        if name not in {s.name for s in self.specs()}:
            raise NoModelError(f"no model named {name!r}; known: {', '.join(s.name for s in self.specs())}",
                               field="model")
        return self._models.get(self.key, name, lambda: self._load(name))

    def _load(self, name: str) -> Engine:
        from core.engine import Engine

        try:  # served at once: a conversion that is not cached yet runs in the background
            engine = Engine(self.settings, name, convert="background")
        except Exception as exc:  # WeightsError, DeviceError, a broken entry ...
            self._errors[name] = self._public(getattr(exc, "message", None) or str(exc))
            raise ModelUnavailableError(f"the model could not be loaded: {self._errors[name]}") from None
        self._errors.pop(name, None)
        return engine

    def _public(self, message: str) -> str:
        """A message for clients (and the open ``/healthz``): file names, never the server's folders."""
        from core.redact import scrub_paths

        return scrub_paths(message, self.settings.server_folders())

    def route(self, task: str, dataset_name: str, model: str | None = None) -> Engine:
        """The engine for a request: the named model, else the default when it serves it, else the first that does.

        When no model serves the dataset, the default engine is returned (it answers "no model for this dataset").
        """
        if self._fixed is not None or model:
            return self.engine(model)
        names = self.served_by(task, dataset_name)
        return self.engine(names[0] if names else None)

    def serving(self, task: str, dataset_name: str, model: str | None = None) -> Engine:
        """The engine that answers ``(task, dataset_name)`` (as :meth:`route` picks it), or NoModelError: the one
        "is this served?" check of every door."""
        engine = self.route(task, dataset_name, model)
        engine.check_serves(task, dataset_name)
        return engine

    def batcher(self, engine: Engine) -> MicroBatcher | None:
        """The micro-batcher of ``engine`` when concurrent requests share forward passes, else None."""
        if not self._wants_micro_batching(engine):
            return None
        name = engine.spec.name
        with self._lock:
            if name not in self._batchers:
                from core.batching import MicroBatcher

                limit = max_batch(engine, self.settings.max_batch_size)
                self._batchers[name] = MicroBatcher(engine, max_batch=limit,
                                                    window_s=self.settings.batch_wait_ms / 1000.0)
        return self._batchers[name]

    def _wants_micro_batching(self, engine: Engine) -> bool:
        if self._micro_batch is not None:
            return self._micro_batch
        mode = self.settings.micro_batch
        return mode == "on" or (mode == "auto" and getattr(engine.device, "type", None) == "cuda")

    # ------------------------------------------------------------------------------------------ reading
    @property
    def loaded(self) -> dict[str, Engine]:
        if self._fixed is not None:
            return {self._fixed.spec.name: self._fixed}
        return self._models.of(self.key)

    def release(self) -> int:
        """Let go of this settings key's loaded models and this pool's micro-batchers; returns how many engines.
        The next request loads the model again."""
        with self._lock:
            self._batchers.clear()
        return 0 if self._fixed is not None else self._models.release(self.key)

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    @property
    def batchers(self) -> dict[str, MicroBatcher]:
        return dict(self._batchers)

    def describe(self) -> tuple[list[dict], str | None]:
        """Every model (loaded ones with their full info) and the manifest's error, if any."""
        try:
            specs, error = self.specs(), None
        except UUSICError as exc:
            specs, error = [engine.spec for engine in self.loaded.values()], self._public(exc.message)
        try:
            default = self.default_name()
        except UUSICError:
            default = None
        entries, loaded = [], self.loaded
        for spec in specs:
            engine = loaded.get(spec.name)
            entry = engine.model_info() if engine is not None else _spec_info(spec)
            error_text = self._errors.get(spec.name)
            entries.append({**entry, "loaded": engine is not None, "default": spec.name == default,
                            "error": None if error_text is None else self._public(error_text)})
        entries.sort(key=lambda e: (not e["loaded"], not e["default"]))
        return entries, error


def max_batch(engine: Engine, wanted: int) -> int:
    """``wanted``, capped by the model's own ``max_batch`` (an export that only runs one image at a time)."""
    limit = getattr(engine.spec, "max_batch", None) or engine.spec.extra.get("max_batch")
    return max(1, min(int(wanted), int(limit))) if limit else max(1, int(wanted))


def _spec_info(spec: ModelSpec) -> dict[str, Any]:
    return {"name": spec.name, "arch": spec.arch, "file": Path(spec.file).name, "sha256": spec.sha256,
            "input_size": spec.input_size, "preprocessing": spec.preprocessing, "description": spec.description,
            "datasets": None if spec.datasets is None else [list(d) for d in spec.datasets]}
