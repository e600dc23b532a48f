"""The dpdiffusion Space (Gradio app), shipped inside the package so that ``dpdiffusion space`` runs from a wheel.

- `build_demo` / `main` (``app.py``): the page and its server; ``python -m dpdiffusion.space.app``.
- `export_space` / `push_space` (``export.py``): a complete, ready-to-push Space repository (``app.py``,
  ``README.md`` with the Space's YAML, ``requirements.txt`` and the package itself) and its upload.
- ``template/`` (the repository's ``spaces/`` folder): the Space's ``app.py`` entry, ``README.md`` and
  ``requirements.txt``, the files `export_space` starts from.
"""

from .app import build_demo, main
from .export import export_space, push_space

__all__ = ["build_demo", "export_space", "main", "push_space"]
