"""wssl-zoo: the model zoo of whitening-based self-supervised learning.

Public API::

    import wssl_zoo
    wssl_zoo.list_models()                 # registered names
    wssl_zoo.get_entry("intl_r50")         # the registry entry (frozen dataclass)
    wssl_zoo.create("cwrgp_resnet18_cifar10")   # architecture, random init, eval mode
    wssl_zoo.load("intl_r50")              # published weights: pinned Hub commit, sha256-checked
    wssl_zoo.load("hf-hub:org/name@rev")   # any Hub repo in the wssl-zoo / timm format
    wssl_zoo.load("path/to/model_dir")     # a local pretraining or `wssl-zoo convert` output
    wssl_zoo.load("random:resnet18:cifar:32")   # random init (the baseline of every table)
    w = wssl_zoo.resolve("intl_r50")       # the handle: w.weights_sha256, w.label, w.normalisation(ds),
    model = w.build()                      #   w.eval_transform(ds), w.build_projector()
"""

from ._version import __version__

_API = ("create", "get_entry", "list_models", "load")


def __getattr__(name: str):
    # Lazy: `import wssl_zoo.losses` should not pay for timm and the registry.
    if name in _API:
        from . import api  # lazy, as resolve below

        return getattr(api, name)
    if name == "resolve":
        from .weights import resolve  # lazy: `import wssl_zoo.losses` should not load torch and timm

        return resolve
    raise AttributeError(f"module 'wssl_zoo' has no attribute {name!r}")


__all__ = ["create", "get_entry", "list_models", "load", "resolve", "__version__"]
