"""The bundled fake Amperity API, at the import path users' tests know (`proxy.fake_amperity`).

It lives in `proxy.testing`; this module re-exports it, and runs it on its own as before
(`python -m proxy.fake_amperity`).
"""

import sys

from proxy.testing import *  # noqa: F403 (a re-export: the documented import path)
from proxy.testing import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
