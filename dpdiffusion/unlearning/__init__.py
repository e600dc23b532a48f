"""Feature unlearning of image classifiers (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023).

```python
from dpdiffusion.unlearning import unlearn
result = unlearn(model, (orig_images, labels), (protected_images, labels), method="second_order",
                 train_set=(revised_train_images, train_labels))
result.model, result.seconds, result.damping

# any Hub classifier: by folder or repo id, preprocessed by its own AutoImageProcessor
result = unlearn("me/vit-faces", original_ds, revised_ds, method="second_order", label_column="label",
                 train_set=revised_train_ds, last_k_blocks=2)
```
"""

import importlib

# imported on first use (PEP 562), so that `dpdiffusion unlearn --help` does not load torch and transformers
_LAZY = {
    "unlearn": ".api",
    **dict.fromkeys(("METHODS", "UnlearningResult", "differentiable_attention", "find_blocks", "select_parameters"),
                    ".core"),
    **dict.fromkeys(("LabelSpec", "default_image_processor", "load_classifier", "make_transform"), ".data"),
    **dict.fromkeys(("HessianOperator", "conjugate_gradient", "power_iteration"), ".second_order"),
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "METHODS",
    "HessianOperator",
    "LabelSpec",
    "UnlearningResult",
    "conjugate_gradient",
    "default_image_processor",
    "differentiable_attention",
    "find_blocks",
    "load_classifier",
    "make_transform",
    "power_iteration",
    "select_parameters",
    "unlearn",
]
