"""A small client for OpenAI-compatible chat-completion APIs (vLLM, Ollama, OpenAI, llama.cpp server).

Built for million-request curation runs, so it has what such runs need and
nothing else:

* an **on-disk cache** keyed by the full request (model, messages, sampling
  parameters): a rerun or a resumed run never pays for an answer twice;
* **retries with exponential backoff** on connection errors, timeouts, 429
  and 5xx (``Retry-After`` is honoured);
* a **rate limit** (requests per second, shared by all threads);
* **batching** through a thread pool (:meth:`LLMClient.chat_many`).

Only the standard library is used (``urllib``), so no extra dependency. The
base URL, model and key come from arguments or the environment:
``CHEXGEN_LLM_BASE_URL`` (or ``OPENAI_BASE_URL``), ``CHEXGEN_LLM_MODEL``,
``CHEXGEN_LLM_API_KEY`` (or ``OPENAI_API_KEY``; local servers need none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_write_json

__all__ = ["LLMClient", "RateLimiter"]

log = logging.getLogger(__name__)
Message = dict[str, str]


class RateLimiter:
    """At most ``rate_per_s`` acquisitions per second across threads (evenly spaced)."""

    def __init__(self, rate_per_s: float):
        self.interval = 1.0 / rate_per_s if rate_per_s and rate_per_s > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.interval == 0:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)


@dataclass
class LLMClient:
    """Chat completions over HTTP with cache, retries, rate limit and batching.

    Args:
        base_url: API root, e.g. ``http://localhost:8000/v1`` (vLLM) or ``http://localhost:11434/v1`` (Ollama).
        model: model name the server knows.
        api_key: bearer token, if the server wants one.
        cache_dir: folder for cached answers (``None``: no cache).
        max_retries: attempts after the first one for retryable failures.
        backoff_s: first backoff; doubles each retry (capped at ``max_backoff_s``).
        timeout_s: per-request timeout.
        rate_per_s: request rate limit (0 = none).
        workers: threads used by :meth:`chat_many`.
    """

    base_url: str
    model: str
    api_key: str | None = None
    cache_dir: str | os.PathLike | None = None
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    rate_per_s: float = 0.0
    workers: int = 4
    requests_sent: int = field(default=0, init=False)
    cache_hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ChexgenError("LLM base URL missing: pass --llm-base-url or set CHEXGEN_LLM_BASE_URL")
        if not self.model:
            raise ChexgenError("LLM model missing: pass --llm-model or set CHEXGEN_LLM_MODEL")
        self.base_url = self.base_url.rstrip("/")
        self._limiter = RateLimiter(self.rate_per_s)
        self._count_lock = threading.Lock()

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **kwargs: Any) -> "LLMClient":
        env = os.environ
        return cls(
            base_url=base_url or env.get("CHEXGEN_LLM_BASE_URL") or env.get("OPENAI_BASE_URL") or "",
            model=model or env.get("CHEXGEN_LLM_MODEL") or "",
            api_key=env.get("CHEXGEN_LLM_API_KEY") or env.get("OPENAI_API_KEY"),
            **kwargs,
        )

    # -- cache ------------------------------------------------------------------------------------
    def _payload(self, messages: Sequence[Message], temperature: float, max_tokens: int,
                 seed: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": temperature,
                                   "max_tokens": max_tokens}
        if seed is not None:
            payload["seed"] = seed
        return payload

    def _cache_path(self, payload: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return Path(self.cache_dir) / key[:2] / f"{key}.json"

    # -- requests ---------------------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int = 600,
             seed: int | None = None) -> str:
        """The assistant's answer to ``messages`` (from the cache when this exact request was made before)."""
        payload = self._payload(messages, temperature, max_tokens, seed)
        cache = self._cache_path(payload)
        if cache is not None and cache.is_file():
            try:
                text = json.loads(cache.read_text(encoding="utf-8"))["answer"]
                with self._count_lock:
                    self.cache_hits += 1
                return text
            except (json.JSONDecodeError, KeyError):
                log.warning("ignoring unreadable cache entry %s", cache)
        text = self._post(payload)
        if cache is not None:
            atomic_write_json(cache, {"request": payload, "answer": text}, indent=None)
        return text

    def chat_many(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[str]:
        """Answers for many conversations, in order, ``workers`` at a time."""
        if self.workers <= 1 or len(conversations) <= 1:
            return [self.chat(c, **kwargs) for c in conversations]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda c: self.chat(c, **kwargs), conversations))

    def _post(self, payload: dict[str, Any]) -> str:
        url = f"{self.base_url}/chat/completions"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay = self.backoff_s
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self._limiter.acquire()
            with self._count_lock:
                self.requests_sent += 1
            retry_after = None
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                try:
                    return data["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    raise ChexgenError(f"{url}: unexpected response (no choices[0].message.content): "
                                       f"{str(data)[:200]}") from None
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:200] if e.fp else ""
                if e.code != 429 and e.code < 500:
                    raise ChexgenError(f"{url}: HTTP {e.code}: {detail or e.reason}") from None
                last_error = f"HTTP {e.code}: {detail or e.reason}"
                ra = e.headers.get("Retry-After") if e.headers else None
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.max_retries:
                wait = retry_after if retry_after is not None else delay
                log.info("LLM request failed (%s); retry %d/%d in %.1fs", last_error, attempt + 1,
                         self.max_retries, wait)
                time.sleep(wait)
                delay = min(delay * 2, self.max_backoff_s)
        raise ChexgenError(f"{url}: gave up after {self.max_retries + 1} attempts; last error: {last_error}")
