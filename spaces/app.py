"""The dpdiffusion Space: a person looks at a protected face and decides how much privacy is enough.

Hugging Face runs ``python app.py``. The app itself is the package ``dpdiffusion.space`` (it ships inside the wheel),
so this file only starts it; in a Space written by ``dpdiffusion space --export DIR`` the package ``dpdiffusion/``
(source and embedded default model) lies next to this file. See README.md.
"""

from dpdiffusion.space.app import *  # noqa: F401,F403  (the names the app module exports: build_demo, DPSpace ...)
from dpdiffusion.space.app import __all__, main  # noqa: F401

if __name__ == "__main__":
    main()
