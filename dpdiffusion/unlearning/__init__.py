"""Feature unlearning of image classifiers (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023).

```python
from dpdiffusion.unlearning import unlearn
result = unlearn(model, (orig_images, labels), (protected_images, labels), method="second_order",
                 train_set=(revised_train_images, train_labels))
result.model, result.seconds, result.damping
```
"""

from .api import unlearn
from .core import METHODS, UnlearningResult, find_blocks, select_parameters
from .second_order import HessianOperator, conjugate_gradient, power_iteration

__all__ = [
    "METHODS",
    "HessianOperator",
    "UnlearningResult",
    "conjugate_gradient",
    "find_blocks",
    "power_iteration",
    "select_parameters",
    "unlearn",
]
