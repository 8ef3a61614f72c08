"""Rate-limit buckets shared by every process that uses one Redis (`shared.redis`).

Each decision is one atomic step on the server (a Lua script: one round trip, no
read-modify-write race between replicas), GCRA with reservations: the script keeps each
bucket's theoretical arrival time (TAT) in microseconds of the Redis server's own clock (so the
replicas' clocks don't matter), reserves the request's slot and answers how long to wait for
it. The request then waits locally. A reservation beyond `max_wait` is not taken, and the
request gets the local 429 as with a local bucket. An upstream 429 pushes the bucket's TAT
forward, so every replica pauses, not only the one that saw it.

Redis is a peer, not a part of the proxy: a reply the script can't give (another type, a wait
beyond `max_wait`) is decided locally like a Redis that is down (`bad_reply`, said once).

When Redis is slow (a call beyond `shared.redis.timeout`) or down, this process switches to
local buckets at `fallback_share` of the rate, logs the switch once, probes Redis in the
background with back-off and switches back when it answers. Readiness is not affected:
pacing degrades, forwarding doesn't stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from proxy.config import SharedRedis
from proxy.observe.shared import SharedMetrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("amperity_proxy.shared")

# KEYS[1]: the bucket; ARGV: interval and tolerance (burst - 1 intervals) and max wait, in µs.
# Returns the wait in µs for a reserved slot, or -1 - wait when it is beyond max wait (not
# reserved): one integer, the cheapest reply to parse.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return -1 - wait end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return wait
"""
# KEYS[1]: the bucket; ARGV[1]: pause and ARGV[2]: tolerance, in µs. Nobody's slot comes
# before now + pause.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < want then
  redis.call('SET', KEYS[1], string.format('%d', want), 'PX', math.ceil((want - now) / 1000) + 1000)
end
return 1
"""
_PROBE_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds between probes while Redis is down
_US = 1_000_000


def _described(reply: object) -> str:
    """What a reply was, never what it said (a hostile store's text stays out of the log)."""
    if isinstance(reply, int) and not isinstance(reply, bool):
        return "an integer out of range"
    return f"a {type(reply).__name__}"


class SharedDown(Exception):
    """Redis did not answer in time, or failed: decide locally."""


class SharedBuckets:
    """The Redis side of pacing; `Pacer` asks it first for a shared route's bucket."""

    def __init__(self, settings: SharedRedis, password: str | None, metrics: SharedMetrics) -> None:
        import redis.asyncio  # the [redis] extra; imported only when shared: is configured
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs: dict[str, Any] = {
            "password": password,
            # Each call within `timeout`, and no retries (redis-py's default retries a failed
            # call 10 times with back-off): a slow Redis means fall back now, not later.
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if settings.ca_file:
            kwargs["ssl_ca_certs"] = settings.ca_file
        self._client: Redis = redis.asyncio.Redis.from_url(settings.url, **kwargs)
        self._reserve = self._client.register_script(_RESERVE)
        self._pause = self._client.register_script(_PAUSE)
        self.settings = settings
        self.metrics = metrics
        self.up = True
        self._outcomes = {o: metrics.decisions.labels(o) for o in ("immediate", "wait", "refused")}
        self._probe: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._lied = False  # a reply the script can't give was logged
        metrics.up.set(1)

    def key(self, parts: tuple[str, ...]) -> str:
        return ":".join((self.settings.key_prefix, "bucket", *parts))

    async def reserve(
        self, key: str, rate: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        """(reserved, seconds to wait). Raises SharedDown when Redis can't decide in time."""
        interval = _US / rate
        limit = round(max_wait * _US)
        args = [round(interval), round(interval * (burst - 1)), limit]
        reply = self._checked(await self._call(self._reserve, key, args), limit)
        reserved, wait = reply >= 0, (reply if reply >= 0 else -1 - reply) / _US
        outcome = "refused" if not reserved else "wait" if wait > 0 else "immediate"
        self._outcomes[outcome].inc()
        return reserved, wait

    def _checked(self, reply: object, limit: int) -> int:
        """SECURITY: Redis is a peer, not a part of the proxy. The script answers an integer:
        a wait in 0..limit µs (reserved), or -1 - wait with a wait beyond limit (refused).
        Anything else is a Redis that is down for this decision: paced locally, counted as
        `bad_reply`, said once. A request never waits past max_wait whatever Redis says."""
        if (
            isinstance(reply, int)
            and not isinstance(reply, bool)
            and (0 <= reply <= limit or -1 - reply > limit)
        ):
            return reply
        self.metrics.decisions.labels("bad_reply").inc()
        if not self._lied:
            self._lied = True
            log.warning(
                "shared state gave a reply its script can't give (%s); this decision, and any "
                "other such one, is paced locally at %g of the rate",
                _described(reply),
                self.settings.fallback_share,
            )
        raise SharedDown

    async def pause(self, key: str, seconds: float, rate: float, burst: int) -> None:
        """Hold the bucket for every process: no slot before `seconds` from now."""
        interval = _US / rate
        await self._call(self._pause, key, [round(seconds * _US), round(interval * (burst - 1))])

    async def _call(self, script: Any, key: str, args: list[int]) -> Any:
        if not self.up:
            raise SharedDown
        started = time.perf_counter()
        try:  # the client's socket_timeout is `timeout`: no asyncio.timeout scope per call
            reply = await script(keys=[key], args=args)
        except Exception as exc:  # any failure of the store means: decide locally
            self._went_down(exc)
            raise SharedDown from None
        self.metrics.roundtrip.observe(time.perf_counter() - started)
        return reply

    def _went_down(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self._down_since = time.monotonic()
        self.metrics.up.set(0)
        log.warning(
            "shared state unreachable (%s); pacing locally at %g of each rate until Redis answers",
            type(exc).__name__,
            self.settings.fallback_share,
        )
        self._probe = asyncio.create_task(self._recover(), name="shared-state-probe")

    async def _recover(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(_PROBE_BACKOFF[min(attempt, len(_PROBE_BACKOFF) - 1)])
            attempt += 1
            try:
                async with asyncio.timeout(max(self.settings.timeout, 1.0)):
                    await self._client.ping()
            except Exception:  # noqa: S112 (still down: probe again later)
                continue
            break
        self.metrics.fallback_seconds.inc(time.monotonic() - self._down_since)
        self.up = True
        self.metrics.up.set(1)
        log.warning("shared state reachable again; pacing on Redis")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._client.aclose()
