"""The bundled fake Amperity API, shipped for the demo and for users' own integration tests
(`from proxy.testing import FakeAmperity, make_tls, make_token, start_fake`; the older path
`proxy.fake_amperity` keeps working).

- `fake`: the API itself (what Amperity checks, a record of every request, reflection)
- `specials`: its `_fake/...` paths for faults and edge cases
- `tls`: a throwaway CA and a resolver for realistic host names
- `patterns`: deterministic payloads
- `standalone`: `make fake`
"""

from proxy.testing.fake import (
    FAKE_CLIENT_ID,
    FAKE_CLIENT_SECRET,
    TENANT_CLAIM,
    TEST_SECRET,
    FakeAmperity,
    RecordedRequest,
    make_token,
    start_fake,
    swap_secret_volume,
)
from proxy.testing.patterns import GZIP_JSON, pattern
from proxy.testing.standalone import main, serve_standalone
from proxy.testing.tls import FakeResolver, FakeTLS, make_tls

__all__ = [
    "FAKE_CLIENT_ID",
    "FAKE_CLIENT_SECRET",
    "GZIP_JSON",
    "TENANT_CLAIM",
    "TEST_SECRET",
    "FakeAmperity",
    "FakeResolver",
    "FakeTLS",
    "RecordedRequest",
    "main",
    "make_tls",
    "make_token",
    "pattern",
    "serve_standalone",
    "start_fake",
    "swap_secret_volume",
]
