"""A reward server for the tests: the HTTP contract of engine/rl/rewards/server.py (POST {"images": [base64 PNG],
"prompts": [...]} -> {"scores": [...]}) served from a thread on 127.0.0.1, on a free port, scoring each image by
its brightness (the mean of its RGB values over 255, as the builtin brightness reward).

    with RewardServer() as server:          # or the reward_server fixture (tests/conftest.py), which closes it
        ... rl.reward_server_url = server.url ...

It can misbehave on request: `statuses` (500, 400, ...) are answered first, one per request, with `error_text`;
`answer` replaces the JSON of every good answer. `down()` takes it away and `up()` brings it back on the same port
(an outage in the middle of a run). Bounded: a connection that sends nothing is dropped after TIMEOUT_S, the
handler threads are daemons, and closing waits at most TIMEOUT_S for the serving thread.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RewardServer:
    TIMEOUT_S = 30.0

    def __init__(self, statuses=(), error_text: str = "", answer: str | None = None):
        self.statuses, self.error_text, self.answer = list(statuses), error_text, answer
        self.requests = 0  # every request that arrived, the refused ones too
        self.port = 0      # 0 until the first up(): then the free port the system gave, kept across down()/up()
        self._httpd = self._thread = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reward"

    def up(self) -> None:
        if self._httpd is not None:
            return
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"reward server :{self.port}",
                                        daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop answering and free the port (a second call does nothing)."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        thread.join(self.TIMEOUT_S)

    close = down

    def __enter__(self) -> RewardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = owner.TIMEOUT_S

            def do_POST(self):
                owner.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8"))
                if owner.statuses:
                    self._reply(owner.statuses.pop(0), owner.error_text.encode("utf-8"), "text/plain; charset=utf-8")
                    return
                answer = owner.answer if owner.answer is not None else json.dumps(
                    {"scores": [brightness(image) for image in body["images"]]})
                self._reply(200, answer.encode("utf-8"), "application/json")

            def _reply(self, status: int, payload: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output clean
                pass

        return Handler


def brightness(png_base64: str) -> float:
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB")
    return sum(ImageStat.Stat(image).mean) / 3 / 255
