"""The demo upstream: answers every request with a JSON echo of what reached it.

`make run` puts it behind Envoy, and the end-to-end tests read the echo to see which identity
headers the filter sent upstream (and that a client's spoofed ones were removed).
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response: headers and body in separate small writes meet Nagle's algorithm
    # and delayed ACKs, adding about 40 ms to every keep-alive response.
    wbufsize = -1

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, fmt, *args):  # quiet: Envoy's access log is the one to read
        pass


def serve(handler, port):
    """Serves `handler` on loopback until interrupted; the first line printed names the port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=18080, help="0 picks a free port")
    serve(Echo, parser.parse_args().port)


if __name__ == "__main__":
    main()
