"""The named networks of registry.yaml's ``networks:`` section (and of ``$RELEARN_REGISTRY``).

Each entry is a base of its own name (``--base mynet``), run by the generic adapter of its format (``onnx`` or
``torchscript``) with the entry's model file and options; options given on the command line override the entry's.
"""

from __future__ import annotations

from relearn_core import plugins
from relearn_core.hookspecs import AdapterInfo, hookimpl
from relearn_core.registry import NetworkBase, load_registry


def _entries() -> dict[str, NetworkBase]:
    return {entry.name: entry for entry in load_registry().networks}


@hookimpl
def relearn_adapters():
    return [
        AdapterInfo(
            name=entry.name,
            description=entry.description or f"{entry.format} network {entry.model.name} (named in the registry)",
            predicts_from="network",
            options={**entry.options, "model": str(entry.model)},
        )
        for entry in _entries().values()
    ]


@hookimpl
def relearn_predict(adapter, images, names, options):
    entry = _entries()[adapter]
    generic = plugins.get_adapter(entry.format)
    return plugins.predict(generic, images, names, {**generic.info.options, **options})


@hookimpl
def relearn_check_options(adapter, options):
    entry = _entries()[adapter]
    generic = plugins.get_adapter(entry.format)
    return plugins.check_options(generic, {**generic.info.options, **options})
