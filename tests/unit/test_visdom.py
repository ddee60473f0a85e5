"""Live plots: posted to a real HTTP server on 127.0.0.1; a server that is down costs one warning."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from hpaflow.visdom import VisdomPlot

HISTORY = [
    {"epoch": 1, "train_loss": 0.5, "val_bce": 0.4, "val_f1_at_0.5": 0.1, "val_f1_best_global": 0.2},
    {"epoch": 2, "train_loss": 0.3, "val_bce": 0.35, "val_f1_at_0.5": 0.2, "val_f1_best_global": 0.3},
]


def test_posts_curves_to_the_server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    plot = VisdomPlot(
        {"server": "http://127.0.0.1", "port": server.server_address[1], "env": "t"},
        "m_fold0",
        logging.getLogger("test"),
    )
    plot.update(HISTORY)
    server.server_close()
    assert plot.enabled
    path, body = received[0]
    assert path == "/events" and body["eid"] == "t" and body["win"] == "m_fold0"
    curve = {d["name"]: d for d in body["data"]}["val_f1_best_global"]
    assert curve["x"] == [1, 2] and curve["y"] == [0.2, 0.3]


def test_server_down_warns_once(caplog):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    plot = VisdomPlot({"server": "http://127.0.0.1", "port": port, "env": "t"}, "w", logging.getLogger("test"))
    with caplog.at_level(logging.WARNING):
        plot.update(HISTORY)
        plot.update(HISTORY)
    assert not plot.enabled
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1


def test_off_without_server():
    assert not VisdomPlot({}, "w", logging.getLogger("test")).enabled
