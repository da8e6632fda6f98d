"""A minimal client for an OpenAI-compatible chat-completions endpoint.

Used, only when configured, by SceneDPO's answer rephraser (paper §4.4 used GPT-4o) and
by GPT-Score (MSR3D's judge). Any server speaking ``POST {base}/chat/completions`` works:
OpenAI, Azure's compatible route, vLLM, llama.cpp, Ollama. The standard library's urllib
does the request, so no client package is needed; the API key is read from an environment
variable (never from a config file) and sent only when that variable is set.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


class ChatError(RuntimeError):
    """The endpoint could not be reached or gave no usable reply (the message says which)."""


@dataclass
class ChatClient:
    endpoint: str  # base URL (".../v1") or the full ".../chat/completions" URL
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    temperature: float = 0.0
    retries: int = 2  # extra attempts after a failed request (1 s, 2 s, ... apart)

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 256) -> str:
        """The assistant's reply text to ``messages`` (role/content dicts)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(attempt)  # a rate-limited or restarting server gets a moment
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    reply = json.loads(resp.read().decode())
                return str(reply["choices"][0]["message"]["content"] or "").strip()
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500 and exc.code != 429:  # a bad request or key will not get better
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                last = f"not a chat-completions reply ({type(exc).__name__}: {exc})"
                break
        raise ChatError(f"chat endpoint {self.url} (model {self.model!r}): {last}")
