"""The admin port's status page: one server-rendered HTML page for a person with a browser.

No external assets and no framework: inline CSS and a few lines of script (to show times in the
viewer's time zone), both allowed only by a per-response nonce in a strict
Content-Security-Policy the page sets itself. It refreshes itself every few seconds with a meta
refresh. It renders `/status.json`'s document, so both always agree.
"""

from __future__ import annotations

import secrets
import time
from html import escape
from typing import Any

from proxy.admin.charts import lifetime, sparkline
from proxy.tokens import in_words
from proxy.tokens.health import utc

REFRESH_SECONDS = 5
STATE_LABELS = {
    "ok": "OK",
    "expiring": "expires within 7 days",
    "expired": "EXPIRED",
    "failing": "failing to load",
    "missing": "no token",
    "refused": "REFUSED by Amperity",
}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{font-size:18px;margin:0 0 4px}
header p{margin:0;color:#c9cfdb}
main{padding:16px 24px;display:grid;gap:14px;grid-template-columns:repeat(auto-fill,minmax(380px,1fr))}
section{background:#fff;border-radius:8px;border-left:8px solid #9aa3b5;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.ok{border-left-color:#1f9d55}section.expiring{border-left-color:#e0a100}
section.expired,section.refused{border-left-color:#d42f2f}section.failing,section.missing{border-left-color:#7c3aed}
h2{font-size:16px;margin:0 0 8px;display:flex;justify-content:space-between;gap:8px}
.badge{font-size:12px;font-weight:600;border-radius:10px;padding:2px 8px;background:#e6e9ef;color:#1d2330;white-space:nowrap}
.ok .badge{background:#dcf3e5;color:#145c33}.expiring .badge{background:#fff1c2;color:#6b4d00}
.expired .badge,.refused .badge{background:#fde0e0;color:#8a1c1c}.failing .badge,.missing .badge{background:#ede4ff;color:#4c1d95}
.ready{background:#1f9d55;color:#fff}.notready{background:#d42f2f;color:#fff}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dt{color:#5b6478}dd{margin:0;overflow-wrap:anywhere}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace}
dd svg{display:block;width:100%;max-width:320px;height:auto;margin:2px 0}
"""

_SCRIPT = """
for (const t of document.querySelectorAll("time[datetime]")) {
  t.textContent = new Date(t.dateTime).toLocaleString();
}
"""


def _time(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    fallback = utc(timestamp)
    return f'<time datetime="{iso}">{fallback}</time>'


def _route(route: dict[str, Any], now: float) -> str:
    token = route["token"]
    state = route["state"]
    left = token["seconds_left"]
    if left is None:
        expiry = "no expiry claim" if token["fingerprint"] else "—"
    elif left > 0:
        expiry = f"{_time(token['expires_at'])} (expires in {in_words(left)})"
    else:
        expiry = f"{_time(token['expires_at'])} (expired {in_words(left)} ago)"
    traffic = route["traffic"]
    rate = f"{traffic['error_rate'] * 100:.1f}%" if traffic["requests"] else "—"
    unauthorized = route["unauthorized"]
    causes = ", ".join(f"{escape(k)}: {v}" for k, v in sorted(unauthorized["by_cause"].items()))
    last_401 = f" (last {_time(unauthorized['last_at'])})" if unauthorized["last_at"] else ""
    error = route["last_upstream_error"]
    last_error = f"{escape(error['reason'])} at {_time(error['at'])}" if error else "none"
    refusals = route["refusals"]
    refused = "none"
    if refusals["last"]:
        last = refusals["last"]
        said = f": “{escape(last['message'])}”" if last["message"] else ""
        refused = (
            f"{refusals['recent']} of the last {refusals['of']} answers; last "
            f"{last['status']} at {_time(last['at'])}{said}"
        )
    source = escape(token["source"] or "—")
    fingerprint = escape(token["fingerprint"] or "—")
    return f"""
<section class="{escape(state)}" data-route="{escape(route["name"])}">
  <h2><span>{escape(route["name"])}</span><span class="badge">{STATE_LABELS.get(state, escape(state))}</span></h2>
  <dl>
    <dt>prefix</dt><dd><code>{escape(route["prefix"])}</code></dd>
    <dt>tenant</dt><dd>{escape(route["tenant"])} · {escape(route["api"])} API</dd>
    <dt>upstream</dt><dd><code>{escape(route["base_url"])}</code></dd>
    <dt>rate limit</dt><dd class="limiter">{escape(route["rate_limit"] or "off")}</dd>
    <dt>token</dt><dd>{source} · <code>{fingerprint}</code></dd>
    <dt>issued</dt><dd>{_time(token["issued_at"])}</dd>
    <dt>expires</dt><dd class="expiry">{expiry}</dd>
    <dt>lifetime</dt><dd>{lifetime(token["issued_at"], token["expires_at"], now) or "—"}</dd>
    <dt>last 5 min</dt><dd>{traffic["requests"]} requests, {traffic["errors"]} errors ({rate})
      {sparkline(traffic["series"], traffic["step_seconds"])}</dd>
    <dt>upstream 401s</dt><dd>{causes or "none"}{last_401}</dd>
    <dt>refused (401/403)</dt><dd class="refusals">{refused}</dd>
    <dt>last error</dt><dd>{last_error}</dd>
  </dl>
</section>"""


def render(document: dict[str, Any]) -> tuple[str, str]:
    """(html, Content-Security-Policy) for a `/status.json` document."""
    nonce = secrets.token_urlsafe(16)
    now = float(document["now"])
    ready = document["ready"]
    reload = document["reload"]
    reload_text = (
        f"config loaded {_time(reload['at'])}"
        if reload["successful"]
        else f"last config reload FAILED ({len(reload['errors'])} error(s)); running on the previous one"
    )
    routes = "".join(_route(route, now) for route in document["routes"])
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>amperity-proxy status</title>
<style nonce="{nonce}">{_CSS}</style>
</head>
<body>
<header>
  <h1>amperity-proxy {escape(document["version"])}</h1>
  <p>up {in_words(document["uptime_seconds"])} ·
     <span class="badge {"ready" if ready else "notready"}">{"ready" if ready else "NOT READY"}</span>
     {"· draining" if document["draining"] else ""} · {reload_text} · page updated {_time(now)}</p>
</header>
<main>{routes}
</main>
<script nonce="{nonce}">{_SCRIPT}</script>
</body>
</html>
"""
    csp = (
        "default-src 'none'; "
        f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp
