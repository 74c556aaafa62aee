"""The server reward: a reward computed by another process, over HTTP (rl.reward_server_url).

    POST rl.reward_server_url   {"images": ["<base64 PNG>", ...], "prompts": ["...", ...]}
    answer                      {"scores": [0.7, ...]}   (a bare list [0.7, ...] is accepted too)

This keeps a big scorer (a VLM, an OCR model, a human-preference model with its own dependencies) out of the
trainer's process and GPU memory. A server that does not answer (refused, timed out, HTTP 5xx) is tried
rl.reward_server_retries times in all, 1 s, 2 s, ... (at most 5 s) apart; then RewardServerDown, on which the RL
loop pauses the run and retries later. A server that answers but refuses the batch (HTTP 4xx) or answers nonsense
is the user's to fix: a UserError with the server's own words.

No proxy is ever used: a system proxy (HTTP_PROXY) would otherwise take the request for 127.0.0.1 away from the
server next door. Only the standard library: no new dependency.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from engine.failures import UserError

MAX_BACKOFF_S = 5.0
SERVER_TEXT_CHARS = 200   # of a server's error answer, shown to the user
_CONTRACT = ("The server gets a POST of JSON {\"images\": [base64 PNG], \"prompts\": [...]} and answers "
             "{\"scores\": [one number per image]}.")


class RewardServerDown(Exception):
    """The reward server did not answer after `tries` tries; the run can pause and try again later."""

    def __init__(self, url: str, tries: int, last_error: str):
        tried = "1 try" if tries == 1 else f"{tries} tries"
        super().__init__(f"The reward server at {url} did not answer after {tried} (last: {last_error}).")
        self.url, self.tries, self.last_error = url, tries, last_error


def build(rl, device, cache: dict):
    return ServerReward(check_url(rl.reward_server_url), rl.reward_server_timeout_s, rl.reward_server_retries)


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"rl.reward_server_url: {url!r} is not an http:// or https:// address.",
                        "Set it to where the reward server listens, e.g. http://127.0.0.1:8765/reward.")
    return parts.geturl()


def backoff_s(attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (1, 2, ...): 1, 2, 3, 4, 5, 5, ..."""
    return min(float(attempt), MAX_BACKOFF_S)


class ServerReward:
    """score(images, prompts) -> the server's scores (checked by RewardSet). `sleep` is injectable for the tests."""

    def __init__(self, url: str, timeout_s: float, tries: int, sleep=time.sleep):
        self.url, self.timeout_s, self.tries, self.sleep = url, timeout_s, max(1, int(tries)), sleep
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # {}: no proxy, ever

    def __call__(self, images, prompts) -> list:
        body = json.dumps({"images": [png_base64(image) for image in images], "prompts": list(prompts)})
        request = urllib.request.Request(self.url, data=body.encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json; charset=utf-8"})
        last_error = ""
        for attempt in range(1, self.tries + 1):
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    return self._scores(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise self._refused(exc) from exc
                last_error = f"HTTP {exc.code} {_body(exc)}".strip()
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ssl.SSLCertVerificationError):  # waiting will not fix a certificate
                    raise UserError(f"rl.reward_server_url: {self.url}: {exc.reason}",
                                    "Use http:// for a server on this machine or your network, or give the "
                                    "server a certificate this computer trusts.") from exc
                last_error = str(exc.reason)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if attempt < self.tries:
                self.sleep(backoff_s(attempt))
        raise RewardServerDown(self.url, self.tries, last_error)

    def _scores(self, raw: bytes) -> list:
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        scores = answer.get("scores") if isinstance(answer, dict) else answer
        if not isinstance(scores, list):
            raise UserError(f"The reward server at {self.url} answered something other than scores: "
                            f"{_text(raw)!r}", _CONTRACT)
        return scores

    def _refused(self, exc: urllib.error.HTTPError) -> UserError:
        return UserError(f"The reward server at {self.url} refused the batch: HTTP {exc.code}: {_body(exc)}",
                         f"Its log says more; fix the server or what it expects. {_CONTRACT}")


def png_base64(image) -> str:
    buffer = io.BytesIO()
    # compress_level 1: on a local link, PNG's slow best compression costs more time than the bytes it saves
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _body(exc: urllib.error.HTTPError) -> str:
    """The start of an error answer's text; '' when the connection broke before it came."""
    try:
        return _text(exc.read())
    except (OSError, http.client.HTTPException):
        return ""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()[:SERVER_TEXT_CHARS]
