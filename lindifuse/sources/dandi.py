"""DANDI archive download URLs: resolve once, reuse the pre-signed URL until it expires.

``https://api.dandiarchive.org/api/assets/<id>/download/`` answers every request with a redirect
to a pre-signed S3 URL. Following that redirect for every chunk doubles the requests (and the
latency), so the HTTP client resolves such a URL once, remembers the final URL until its
signature expires (``X-Amz-Date`` + ``X-Amz-Expires``, or ``Expires``), and resolves again on
expiry or when the signed URL answers 403. Everything above the HTTP client (cache keys,
validators, statistics) sees only the stable asset URL.

With ``DANDI_API_KEY`` set, ``Authorization: token <key>`` goes to the API hosts only, never to
the host the API redirects to. The API hosts are ``LINDIFUSE_DANDI_API_HOSTS`` (comma-separated
``host`` or ``host:port``; default the public archive's API) so that tests can point them at a
loopback server.
"""

from __future__ import annotations

import calendar
import os
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

DEFAULT_API_HOSTS = ("api.dandiarchive.org",)
MAX_REUSE = 24 * 3600.0  # a final URL without an expiry is re-resolved after this long


def parse_hosts(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_API_HOSTS
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def signed_url_expiry(url: str) -> float | None:
    """Epoch seconds at which a pre-signed URL stops working, or None when it does not say."""
    q = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items() if v}
    if "x-amz-date" in q and "x-amz-expires" in q:
        try:
            t = time.strptime(q["x-amz-date"], "%Y%m%dT%H%M%SZ")
            return calendar.timegm(t) + int(q["x-amz-expires"])
        except (ValueError, OverflowError):
            return None
    if "expires" in q:
        try:
            return float(q["expires"])
        except ValueError:
            return None
    return None


def reuse_until(url: str, now: float) -> float:
    """When to stop reusing a resolved URL: before its expiry, with a margin of 10% of the
    remaining lifetime (at most a minute), so a request never races the expiry."""
    exp = signed_url_expiry(url)
    if exp is None:
        return now + MAX_REUSE
    margin = min(60.0, max(0.0, exp - now) * 0.1)
    return exp - margin


@dataclass
class DandiStats:
    resolutions: int = 0  # requests made to the API to resolve an asset URL
    reuses: int = 0  # requests that used a remembered signed URL
    expired: int = 0  # re-resolutions because the signed URL expired
    forbidden: int = 0  # re-resolutions after a 403 from the signed URL


@dataclass
class DandiResolver:
    hosts: tuple[str, ...] = DEFAULT_API_HOSTS
    api_key: str | None = None
    stats: DandiStats = field(default_factory=DandiStats)
    _final: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> DandiResolver:
        return cls(
            parse_hosts(os.environ.get("LINDIFUSE_DANDI_API_HOSTS")),
            os.environ.get("DANDI_API_KEY") or None,
        )

    def is_api(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        netloc = f"{host}:{parts.port}" if parts.port else host
        return host in self.hosts or netloc in self.hosts

    def auth_headers(self, url: str) -> dict[str, str]:
        if self.api_key and self.is_api(url):
            return {"Authorization": f"token {self.api_key}"}
        return {}

    def cached(self, url: str, now: float | None = None) -> str | None:
        hit = self._final.get(url)
        if hit is None:
            return None
        final, until = hit
        if (time.time() if now is None else now) >= until:
            del self._final[url]
            self.stats.expired += 1
            return None
        self.stats.reuses += 1
        return final

    def remember(self, url: str, final: str, now: float | None = None) -> None:
        self._final[url] = (final, reuse_until(final, time.time() if now is None else now))

    def forget(self, url: str) -> None:
        self._final.pop(url, None)
