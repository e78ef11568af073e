"""The model repository: scans ``<repo>/<name>/<version>/``, verifies, loads, warms up and swaps.

A version gets traffic only after it was verified (``bundle.store.verify_bundle``), loaded in
onnxruntime and warmed up; the swap is one assignment of a new immutable mapping, so a request
sees either the old set of versions or the new one. Versions that leave the mapping finish the
texts already queued for them before their scheduler stops. A bundle that fails is refused with
a log line and ``textclf_bundle_refusals``; the versions already loaded keep serving. A refused
bundle is not retried until its files change (or an explicit load asks for it). Hidden entries
(``.staging-*`` of an in-progress publish, ``.anything``) are never looked at.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from bundle.card import BUNDLE_FILES
from bundle.store import BundleError, list_models, list_versions, validate_model_name, verify_bundle
from service.batching import make_scheduler
from service.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from service.inference_pool import InferencePool
from service.metrics import ServiceMetrics
from service.runtime import ModelRuntime
from service.settings import Settings
from service.types import LoadedModel, ModelState

logger = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class RepositoryEvent:
    kind: Literal["loaded", "unloaded", "refused"]
    name: str
    version: int | None
    reason: str = ""


class Refused(Exception):
    """A bundle refused at stage ``reason``: ``detail`` goes to the log; ``public`` (no paths, no
    library exception text) to RepositoryIndex and load RPC callers."""

    def __init__(self, reason: str, detail: str, public: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail
        self.public = public if public is not None else detail


# what unauthenticated callers see of a refusal whose detail is library text (may hold paths)
_GENERIC = {
    "verification": "refused (verification): model.json is unreadable; details in the server log",
    "load": "refused (load): onnxruntime or tokenizers could not load the bundle, or its logits do not match "
            "its labels; details in the server log",
    "warmup": "refused (warmup): the warm-up inferences failed; details in the server log",
}


def _signature(path: Path) -> Signature:
    parts = []
    for file_name in BUNDLE_FILES:
        try:
            stat = (path / file_name).stat()
            parts.append((file_name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            parts.append((file_name, -1, -1))
    return tuple(parts)


class ModelRepository:
    def __init__(self, settings: Settings, metrics: ServiceMetrics, inference: InferencePool,
                 providers: list[str]) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        self.metrics = metrics
        self.inference = inference
        self.providers = providers
        self._models: MappingProxyType[str, MappingProxyType[int, LoadedModel]] = MappingProxyType({})
        self._states: dict[tuple[str, int], ModelState] = {}
        self._refused: dict[tuple[str, int], Signature] = {}
        self._unloaded: set[str] = set()
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._loads: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self.listeners: list[Callable[[RepositoryEvent], None]] = []

    # -- queries (event loop, no awaits: always a consistent snapshot) -----------------------
    def get(self, name: str, version: int | None = None) -> LoadedModel:
        try:
            validate_model_name(name)
        except BundleError as exc:
            raise InvalidArgument(str(exc)) from None
        versions = self._models.get(name)
        if not versions:
            raise NotFound(f"model {name!r} is not loaded")
        if version is None:
            return versions[max(versions)]
        if version < 1:
            raise InvalidArgument(f"version must be >= 1, got {version}")
        if version not in versions:
            loaded = ", ".join(map(str, sorted(versions)))
            raise NotFound(f"model {name!r} has no loaded version {version} (loaded: {loaded})")
        return versions[version]

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def loaded(self) -> list[LoadedModel]:
        return [self._models[n][v] for n in sorted(self._models) for v in sorted(self._models[n])]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def index(self) -> list[ModelState]:
        return [self._states[key] for key in sorted(self._states)]

    # -- lifecycle ---------------------------------------------------------------------------
    async def load_all(self) -> None:
        self._log_leftover_staging()
        async with self._lock:
            for name in list_models(self.root):
                await self._sync(name, explicit=False)
        if self.settings.poll_interval > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository-poller")

    def _log_leftover_staging(self) -> None:
        """Staging directories of a publish that never finished (a killed publisher) are ignored, not
        deleted: a publisher may be running right now. ``bundle.store.clean_stale_staging`` removes them."""
        leftovers = sorted(str(p.relative_to(self.root)) for name in list_models(self.root)
                           for p in (self.root / name).glob(".staging-*"))
        if leftovers:
            logger.warning("ignoring %d unfinished publish staging director%s (not loaded; remove them when no "
                           "publisher is running): %s", len(leftovers), "y" if len(leftovers) == 1 else "ies",
                           ", ".join(leftovers))

    async def poll_once(self) -> None:
        async with self._lock:
            names = set(list_models(self.root)) | set(self._models)
            for name in sorted(names - self._unloaded):
                await self._sync(name, explicit=False)

    async def load(self, name: str) -> None:
        """Load (or reload) a model: new versions are verified, warmed up, then swapped in."""
        try:
            validate_model_name(name)
        except BundleError as exc:
            raise InvalidArgument(str(exc)) from None
        if not (self.root / name).is_dir():
            raise NotFound(f"model {name!r} is not in the model repository")
        if not self.contains(self.root / name):
            raise PermissionDenied(f"model {name!r} resolves outside the model repository (symlink); refused")
        # shielded: a caller that cancels or times out does not abort the load half-way (the
        # finished load would be dropped and the version left LOADING); it completes and is kept
        task = asyncio.get_running_loop().create_task(self._explicit_load(name), name=f"load-{name}")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        refusals = await asyncio.shield(task)
        if refusals:
            detail = "; ".join(f"version {v}: {why}" for v, why in refusals)
            serving = self.versions(name)
            still = f"still serving versions {serving}" if serving else "no version is loaded"
            raise FailedPrecondition(f"model {name!r}: refused {detail}; {still}")
        if not self.versions(name):
            raise FailedPrecondition(f"model {name!r} has no version to load")

    async def _explicit_load(self, name: str) -> list[tuple[int, str]]:
        async with self._lock:
            self._unloaded.discard(name)
            return await self._sync(name, explicit=True)

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self._models:
                self.get(name)  # raises InvalidArgument / NotFound with the usual message
            self._unloaded.add(name)
            old = self._models[name]
            self._swap(name, {})
            for version in old:
                self._states[(name, version)] = ModelState(name, version, "UNAVAILABLE", "unloaded")
                self._emit(RepositoryEvent("unloaded", name, version))
            self._retire(old.values())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await asyncio.gather(*self._loads, return_exceptions=True)
        async with self._lock:
            models = [m for versions in self._models.values() for m in versions.values()]
            self._models = MappingProxyType({})
        await asyncio.gather(*(m.scheduler.close() for m in models))
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("repository poll failed")

    async def _sync(self, name: str, *, explicit: bool) -> list[tuple[int, str]]:
        """Reconcile one model with the disk; returns the (version, reason) refused in this call."""
        current = dict(self._models.get(name, {}))
        on_disk = sorted(list_versions(self.root, name), reverse=True) if (self.root / name).is_dir() else []
        wanted: dict[int, LoadedModel] = {}
        refusals: list[tuple[int, str]] = []
        limit = self.settings.max_versions
        for version in on_disk:
            if limit and len(wanted) >= limit:
                self._states.setdefault((name, version), ModelState(name, version, "UNAVAILABLE", "not among the latest"))
                continue
            if version in current:
                wanted[version] = current[version]
                continue
            path = self.root / name / str(version)
            signature = _signature(path)
            if not explicit and self._refused.get((name, version)) == signature:
                continue
            try:
                wanted[version] = await self._load_version(name, version, path)
                self._refused.pop((name, version), None)
            except Refused as refusal:
                self._refused[(name, version)] = signature
                refusals.append((version, refusal.public))
        for key in [k for k in self._states if k[0] == name and k[1] not in on_disk]:
            del self._states[key]
        retired = [m for v, m in current.items() if v not in wanted]
        for model in retired:
            if model.version in on_disk:
                self._states[(name, model.version)] = ModelState(name, model.version, "UNAVAILABLE",
                                                                 "not among the latest")
        if wanted.keys() != current.keys():
            self._swap(name, wanted)
            for model in retired:
                self._emit(RepositoryEvent("unloaded", name, model.version))
            self._retire(retired)
        return refusals

    async def _load_version(self, name: str, version: int, path: Path) -> LoadedModel:
        self._states[(name, version)] = ModelState(name, version, "LOADING")
        loop = asyncio.get_running_loop()
        try:
            runtime = await loop.run_in_executor(None, self._build_runtime, name, version, path)
        except Refused as refusal:
            logger.warning("refused bundle %s version %d (%s): %s", name, version, refusal.reason, refusal.detail)
            self.metrics.bundle_refusals.labels(name, str(version), refusal.reason).inc()
            self._states[(name, version)] = ModelState(name, version, "UNAVAILABLE", refusal.public)
            self._emit(RepositoryEvent("refused", name, version, refusal.detail))
            raise
        scheduler = make_scheduler(runtime, self.inference, self.metrics, name, version, self.settings)
        scheduler.start()
        self.metrics.model_loads.labels(name, str(version)).inc()
        self._states[(name, version)] = ModelState(name, version, "READY")
        logger.info("loaded model %s version %d (%s)", name, version, ", ".join(runtime.providers))
        return LoadedModel(name=name, version=version, card=runtime.card, runtime=runtime, scheduler=scheduler)

    def contains(self, path: Path) -> bool:
        """Whether ``path``, with every symlink resolved, is inside the repository root."""
        try:
            return path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # unresolvable or a symlink loop
            return False

    def _build_runtime(self, name: str, version: int, path: Path) -> ModelRuntime:
        """Worker thread: verify, load in onnxruntime, warm up. Raises Refused with a reason."""
        try:  # every file of the bundle, not only the required ones (golden.json, files the card lists)
            members = sorted(path.iterdir())
        except OSError:
            members = [path / f for f in BUNDLE_FILES]
        escaping = [p.name for p in (path, *members) if not self.contains(p)]
        if escaping:
            raise Refused("verification", f"{', '.join(escaping)} resolves outside the model repository (symlink)")
        try:
            card = verify_bundle(path)
        except BundleError as exc:
            # our own message; the public one names the bundle as name/version, not by its path
            raise Refused("verification", str(exc), str(exc).replace(str(path), f"{name}/{version}")) from None
        except Exception as exc:  # a malformed card must be refused, never abort the scan or start-up
            raise Refused("verification", f"unreadable bundle: {type(exc).__name__}: {str(exc)[:300]}",
                          _GENERIC["verification"]) from None
        if card.name != name or card.version != version:
            raise Refused("verification", f"card says {card.name}/{card.version}, directory is {name}/{version}")
        s = self.settings
        try:
            runtime = ModelRuntime.load(path, card, providers=self.providers, intra_op_threads=s.intra_op_threads,
                                        inter_op_threads=s.inter_op_threads, spinning=s.intra_op_spinning,
                                        batching=s.batching)
        except Exception as exc:  # onnxruntime/tokenizers raise many types for a bad file
            raise Refused("load", f"cannot load in onnxruntime: {type(exc).__name__}: {str(exc)[:300]}",
                          _GENERIC["load"]) from None
        if s.warmup:
            try:
                runtime.warmup(s.max_batch_size)
            except Exception as exc:
                raise Refused("warmup", f"warm-up failed: {type(exc).__name__}: {str(exc)[:300]}",
                              _GENERIC["warmup"]) from None
        return runtime

    def _swap(self, name: str, versions: dict[int, LoadedModel]) -> None:
        models = dict(self._models)
        if versions:
            models[name] = MappingProxyType(dict(versions))
        else:
            models.pop(name, None)
        self._models = MappingProxyType(models)
        self.metrics.set_loaded(name, sorted(versions), max(versions) if versions else None)
        for version in sorted(versions):
            self._emit(RepositoryEvent("loaded", name, version))

    def _retire(self, models) -> None:
        for model in models:
            task = asyncio.get_running_loop().create_task(model.scheduler.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _emit(self, event: RepositoryEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("repository listener failed")
