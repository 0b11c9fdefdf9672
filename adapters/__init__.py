"""relearn's built-in adapters, installed as the import package ``relearn_adapters``.

Each module in ``BUILTIN_MODULES`` is registered with the plugin manager exactly as a third-party adapter is.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "relearn_adapters.maps",
    "relearn_adapters.u2netp",
    "relearn_adapters.mbplus",
    "relearn_adapters.network",
    "relearn_adapters.named_networks",
    "relearn_adapters.backbones",
)
