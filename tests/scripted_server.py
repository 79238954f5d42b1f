"""A scripted chat-completions server on loopback, for what a real server cannot be made to do on cue."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_1 = (200, {"choices": [{"message": {"content": "1"}}]})


class ScriptedServer:
    """Answers each POST with ``reply()`` -> (status, JSON body) and records (path, Authorization, body)."""

    def __init__(self, reply=lambda: ANSWER_1):
        self.seen = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.seen.append((self.path, self.headers.get("Authorization"), body))
                status, answer = reply()
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.seen)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
