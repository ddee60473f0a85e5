"""Optional live training curves on a Visdom server, over its plain HTTP API (no client package).

A server that is down or refuses costs one warning; the plot then switches itself off and
training goes on.
"""

from __future__ import annotations

import json
import logging
import urllib.request

CURVES = ("train_loss", "val_bce", "val_f1_at_0.5", "val_f1_best_global")


class VisdomPlot:
    def __init__(self, settings: dict, window: str, log: logging.Logger, timeout_s: float = 2.0) -> None:
        """`settings`: the config's `visdom` block (schema defaults filled); off without a server."""
        self.enabled = bool(settings.get("server"))
        self.url = f"{settings['server'].rstrip('/')}:{settings['port']}/events" if self.enabled else ""
        self.env = settings.get("env")
        self.window, self.log, self.timeout_s = window, log, timeout_s

    def payload(self, history: list[dict]) -> dict:
        epochs = [r["epoch"] for r in history]
        data = [
            {"x": epochs, "y": [r[k] for r in history], "name": k, "type": "scatter", "mode": "lines+markers"}
            for k in CURVES
        ]
        return {
            "data": data,
            "win": self.window,
            "eid": self.env,
            "layout": {"title": self.window, "xaxis": {"title": "epoch"}},
            "opts": {},
        }

    def update(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        body = json.dumps(self.payload(history)).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, bad URLs
            self.log.warning("Visdom server %s unreachable (%s); live plots off for this job", self.url, e)
            self.enabled = False
