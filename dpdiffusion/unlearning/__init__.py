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

from .api import unlearn
from .core import METHODS, UnlearningResult, differentiable_attention, find_blocks, select_parameters
from .data import LabelSpec, default_image_processor, load_classifier, make_transform
from .second_order import HessianOperator, conjugate_gradient, power_iteration

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
