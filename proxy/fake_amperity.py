"""The bundled fake Amperity API, at the import path users' tests know (`proxy.fake_amperity`).

It lives in `proxy.testing.fake`; this module re-exports it, and runs it on its own as before
(`python -m proxy.fake_amperity`).
"""

import sys

from proxy.testing.fake import *  # noqa: F403 (a re-export: the documented import path)
from proxy.testing.fake import main

if __name__ == "__main__":
    sys.exit(main())
