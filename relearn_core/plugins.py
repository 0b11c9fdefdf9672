"""The plugin manager: where adapters (base models) and feature backbones come from.

One module-level :class:`pluggy.PluginManager`, built on first use, holds

- the built-in adapter modules listed in ``relearn_adapters.BUILTIN_MODULES``,
- every module of the ``relearn.adapters`` entry-point group (installed third-party packages),
- adapter files given by path (``--adapter path/to/file.py``, :func:`load_adapter_file`),

all registered the same way. Setting ``RELEARN_TRACE_HOOKS=1`` prints every hook call, its answer and its time on
stderr.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import __version__, hookspecs
from .errors import InputError, RelearnError

ENTRY_POINT_GROUP = "relearn.adapters"
TRACE_ENV = "RELEARN_TRACE_HOOKS"

BUILT_IN = "built-in"
ENTRY_POINT = "entry point"
FILE = "file"


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin module came from."""

    kind: str  #: BUILT_IN, ENTRY_POINT or FILE
    origin: str  #: module name, "distribution:entry-point", or file path
    version: str  #: the distribution's (or module's ``__version__``) version; "" when unknown

    def __str__(self) -> str:
        return f"{self.kind} {self.origin}"


@dataclass(frozen=True)
class Adapter:
    """An adapter as relearn sees it: what it says about itself and where it came from."""

    info: hookspecs.AdapterInfo
    source: PluginSource
    plugin: str  #: name of the plugin that provides it (dispatch goes only to this plugin)

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class Backbone:
    info: hookspecs.BackboneInfo
    source: PluginSource
    plugin: str

    @property
    def name(self) -> str:
        return self.info.name


class DuplicateAdapterError(RelearnError):
    pass


class UnknownNameError(RelearnError):
    pass


_manager: pluggy.PluginManager | None = None
_sources: dict[str, PluginSource] = {}
_adapters: dict[str, Adapter] | None = None
_backbones: dict[str, Backbone] | None = None


def _trace(hook_name: str, hook_impls, kwargs) -> None:
    def brief(value: Any) -> str:
        if hasattr(value, "shape"):
            return f"<{type(value).__name__} {tuple(value.shape)}>"
        if isinstance(value, (list, tuple)) and value and hasattr(value[0], "shape"):
            return f"[{len(value)} arrays]"
        return repr(value)

    arguments = ", ".join(f"{key}={brief(value)}" for key, value in kwargs.items())
    plugins = ", ".join(impl.plugin_name for impl in hook_impls)
    print(f"relearn hook: {hook_name}({arguments}) -> plugins [{plugins}]", file=sys.stderr)


def _build() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV, "").strip() not in ("", "0"):
        started: list[float] = []

        def before(hook_name, hook_impls, kwargs):
            started.append(time.perf_counter())
            _trace(hook_name, hook_impls, kwargs)

        def after(outcome, hook_name, hook_impls, kwargs):
            seconds = time.perf_counter() - started.pop()
            result = (
                "raised " + repr(outcome.exception)
                if outcome.exception
                else f"returned {type(outcome.get_result()).__name__}"
            )
            print(f"relearn hook: {hook_name} {result} in {seconds * 1000:.1f} ms", file=sys.stderr)

        manager.add_hookcall_monitoring(before, after)

    import relearn_adapters

    for module_name in relearn_adapters.BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise RelearnError(
                f"built-in adapter module {module_name} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        _register(manager, module, module_name, PluginSource(BUILT_IN, module_name, __version__))
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        origin = f"{dist.name if dist else '?'}:{entry_point.name}"
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise RelearnError(
                f"adapter entry point {entry_point.name!r} ({entry_point.value}) of the installed package "
                f"{dist.name if dist else '?'} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        _register(
            manager, plugin, f"entry-point:{origin}", PluginSource(ENTRY_POINT, origin, dist.version if dist else "")
        )
    return manager


def _register(manager: pluggy.PluginManager, plugin: Any, name: str, source: PluginSource) -> None:
    if manager.is_registered(plugin):
        return  # e.g. an entry point naming a module that is already registered
    try:
        manager.register(plugin, name=name)
        manager.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        if manager.has_plugin(name):
            manager.unregister(name=name)
        raise RelearnError(f"adapter plugin from {source} is not valid: {exc}") from exc
    if not manager.get_hookcallers(plugin):
        manager.unregister(name=name)
        raise RelearnError(f"adapter plugin from {source} defines no relearn hooks (functions marked @hookimpl)")
    _sources[name] = source


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first call)."""
    global _manager
    if _manager is None:
        _sources.clear()
        _manager = _build()
    return _manager


def reset() -> None:
    """Forget the plugin manager (and any loaded adapter files): the next call rebuilds it from scratch."""
    global _manager, _adapters, _backbones
    _manager, _adapters, _backbones = None, None, None
    _sources.clear()


def loaded_adapter_files() -> list[Path]:
    """The adapter files loaded in this process (a worker process loads the same ones, relearn_core/workspace.py)."""
    return [Path(_sources[name].origin) for name in _sources if name.startswith("file:")]


def load_adapter_file(path: str | os.PathLike) -> list[Adapter]:
    """Load a Python file of hook implementations (``--adapter FILE``); returns the adapters it provides."""
    global _adapters, _backbones
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(path, "adapter file not found")
    if path.suffix != ".py":
        raise InputError(path, "an adapter file must be a Python file (.py)")
    manager = get_plugin_manager()
    plugin_name = f"file:{path}"
    if not manager.has_plugin(plugin_name):
        module_name = f"relearn_adapter_file_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise InputError(path, f"adapter file cannot be loaded: {type(exc).__name__}: {exc}") from exc
        _register(manager, module, plugin_name, PluginSource(FILE, str(path), str(getattr(module, "__version__", ""))))
        _adapters, _backbones = None, None
        try:
            get_adapters()
        except RelearnError:  # e.g. a name clash: leave the manager as it was before this file
            manager.unregister(name=plugin_name)
            _adapters, _backbones = None, None
            raise
    return [adapter for adapter in get_adapters() if adapter.plugin == plugin_name]


def _collect(hook_name: str, kind: type, describe: str) -> dict[str, Any]:
    """Call ``hook_name`` on each plugin on its own, so every answer is attributed to its source."""
    manager = get_plugin_manager()
    found: dict[str, Any] = {}
    record = Adapter if kind is hookspecs.AdapterInfo else Backbone
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        source = _sources[impl.plugin_name]
        try:
            # a non-firstresult hook answers with one list per implementation: here exactly one
            answers = [answer for result in _plugin_caller(impl.plugin_name, hook_name)() for answer in result or ()]
        except Exception as exc:
            raise RelearnError(f"{hook_name} of {source} raised {type(exc).__name__}: {exc}") from exc
        for answer in answers:
            if not isinstance(answer, kind):
                raise RelearnError(f"{hook_name} of {source} returned {answer!r}, not a {kind.__name__}")
            name = answer.name.lower()
            if name in found:
                raise DuplicateAdapterError(
                    f"two {describe}s named {name!r}: one from {found[name].source}, one from {source}"
                )
            found[name] = record(info=answer, source=source, plugin=impl.plugin_name)
    return dict(sorted(found.items()))


def _plugin_caller(plugin_name: str, hook_name: str):
    """A caller of ``hook_name`` restricted to one plugin (still traced like every hook call)."""
    manager = get_plugin_manager()
    others = [plugin for name, plugin in manager.list_name_plugin() if name != plugin_name]
    return manager.subset_hook_caller(hook_name, remove_plugins=others)


def get_adapters() -> list[Adapter]:
    """Every adapter of every registered plugin, sorted by name. Two with one name: DuplicateAdapterError."""
    global _adapters
    if _adapters is None:
        _adapters = _collect("relearn_adapters", hookspecs.AdapterInfo, "adapter")
    return list(_adapters.values())


def _unknown(kind: str, name: str, known: Sequence[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (`relearn adapters list` shows all {len(known)})")


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``; an unknown name raises UnknownNameError listing the close matches."""
    get_adapters()
    try:
        return _adapters[name.lower()]
    except KeyError:
        raise _unknown("base", name, list(_adapters)) from None


def list_adapters(pattern: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> list[Adapter]:
    """Adapters whose name matches any of the fnmatch wildcard ``pattern``s and none of ``exclude``."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern) or ["*"]
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    return [
        adapter
        for adapter in get_adapters()
        if any(fnmatch.fnmatchcase(adapter.name, p.lower()) for p in patterns)
        and not any(fnmatch.fnmatchcase(adapter.name, p.lower()) for p in excludes)
    ]


def _ask_owner(plugin_name: str, hook_name: str, **arguments) -> Any:
    """The answer of the one plugin that owns the adapter or backbone a call is about: dispatch is done here, once,
    so a hook implementation only ever hears of its own names."""
    answers = _plugin_caller(plugin_name, hook_name)(**arguments)
    return answers[0] if answers else None


def predict(adapter: Adapter, images, names, options) -> Any:
    """Call ``relearn_predict`` on the plugin that provides ``adapter`` (and on no other)."""
    return _ask_owner(
        adapter.plugin, "relearn_predict", adapter=adapter.name, images=images, names=names, options=options
    )


def check_options(adapter: Adapter, options) -> str | None:
    """Call ``relearn_check_options`` on the plugin that provides ``adapter``: its description of what it will do
    with ``options`` (None when it has nothing to say); a bad option raises RelearnError."""
    return _ask_owner(adapter.plugin, "relearn_check_options", adapter=adapter.name, options=options)


def get_backbones() -> list[Backbone]:
    """Every feature backbone of every registered plugin, sorted by name."""
    global _backbones
    if _backbones is None:
        _backbones = _collect("relearn_backbones", hookspecs.BackboneInfo, "backbone")
    return list(_backbones.values())


def get_backbone(name: str) -> Backbone:
    get_backbones()
    try:
        return _backbones[name.lower()]
    except KeyError:
        raise _unknown("backbone", name, list(_backbones)) from None


def extract_features(backbone: str, images, device: str) -> list:
    """Deep feature maps of ``images`` (float32 (N, 3, H, W), RGB in [0, 1]) from the backbone called ``backbone``."""
    record = get_backbone(backbone)
    features = _ask_owner(record.plugin, "relearn_extract_features", backbone=record.name, images=images, device=device)
    if features is None:
        raise RelearnError(f"backbone {record.name!r} ({record.source}) returned no features")
    if len(features) != len(record.info.channels):
        raise RelearnError(
            f"backbone {record.name!r} ({record.source}) returned {len(features)} feature maps, "
            f"its BackboneInfo lists {len(record.info.channels)}"
        )
    return list(features)
