"""A minimal client for OpenAI-compatible ``/v1/chat/completions`` endpoints (the judge, external baselines).

The API key comes from an environment variable or a Prefect Secret block at call time; it is only ever put in
the ``Authorization`` header, never logged, returned or written anywhere.
"""

import os


class EndpointError(Exception):
    """The endpoint could not be reached or answered with something unusable (message without the key)."""


def _api_key(env: str | None, secret_block: str | None) -> str | None:
    if env and os.environ.get(env):
        return os.environ[env]
    if secret_block:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(secret_block).get()
        except ValueError as e:
            raise EndpointError(f"Prefect Secret block {secret_block!r} cannot be loaded: {e}") from None
    return None


class ChatClient:
    """``complete(messages)`` → the first choice's text, greedy (temperature 0)."""

    def __init__(self, url: str, model: str, api_key_env: str | None, api_key_secret: str | None, timeout_s: float):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s = model, timeout_s
        self._env, self._secret = api_key_env, api_key_secret
        self.calls = 0

    def complete(self, messages: list[dict], max_tokens: int = 8) -> str:
        import httpx

        key = _api_key(self._env, self._secret)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        self.calls += 1
        try:
            resp = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise EndpointError(f"{self.url}: {type(e).__name__}") from None
        if resp.status_code != 200:
            raise EndpointError(f"{self.url}: HTTP {resp.status_code}")
        try:
            return str(resp.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url}: the answer is not an OpenAI chat completion") from None
