"""Insights (issue 16): LRP arguments applied only where the preset uses them, no 500 for
Occlusion with stride > window, 413 for chunked bodies at the limit, a bounded queue (503)
and work of disconnected clients abandoned, and train-mode models left unchanged."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import torch
from torch import nn

pytest.importorskip("flask")

from captum_rap import LRP  # noqa: E402
from captum_rap.insights import AttributionVisualizer, Batch, ImageFeature, Limits, create_app  # noqa: E402
from captum_rap.insights.server import MAX_BODY_BYTES, start_server  # noqa: E402

CLASSES = ["a", "b", "c"]


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _data(n=3):
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2][:n])


def _vis(model, limits=None):
    x, y = _data()
    return AttributionVisualizer([model], CLASSES, [ImageFeature("Photo", None, None)], [Batch(x, y)],
                                 limits=limits)


def _post(client, path, payload):
    return client.post(path, data=json.dumps(payload), content_type="application/json")


def test_lrp_arguments_are_used_and_echoed_only_where_the_preset_takes_them():
    net = _net()
    client = create_app(_vis(net)).test_client()
    spec = {a["name"]: a for a in client.get("/api/methods").get_json()["methods"][1]["args"]}
    assert spec["gamma"]["only_with"] == {"arg": "preset", "values": ["epsilon_gamma_box"]}
    assert "zplus" not in spec["epsilon"]["only_with"]["values"]
    x, _ = _data()
    for preset, used, ignored in (("epsilon_plus", {"epsilon": 1e-3}, ["gamma"]),
                                  ("zplus", {}, ["epsilon", "gamma"]),
                                  ("epsilon_gamma_box", {"epsilon": 1e-3, "gamma": 2.0}, [])):
        r = _post(client, "/api/attribute", {"method": "LRP", "examples": [1], "target": 2,
                                              "args": {"preset": preset, "epsilon": 1e-3, "gamma": 2.0}})
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["ignored_args"] == ignored
        assert {k: body["args"][k] for k in ("epsilon", "gamma") if k in body["args"]} == used
        want = LRP(net, preset, **used).attribute(x[1:2], target=2)
        assert abs(body["results"][0]["features"][0]["sum"] - float(want.sum())) < 1e-4 * float(want.abs().sum())


def test_occlusion_stride_larger_than_window_is_a_400():
    client = create_app(_vis(_net())).test_client()
    r = _post(client, "/api/attribute", {"method": "Occlusion", "examples": [0], "args": {"window": 2, "stride": 4}})
    assert r.status_code == 400 and "stride" in r.get_json()["error"]


def test_train_mode_model_keeps_its_statistics_through_every_request():
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    client = create_app(_vis(net)).test_client()
    assert client.get("/api/examples").status_code == 200
    for method, args in (("Saliency", {}), ("IntegratedGradients", {"n_steps": 4}),
                         ("Occlusion", {"window": 4, "stride": 4}), ("InputXGradient", {})):
        r = _post(client, "/api/attribute", {"method": method, "examples": [0, 1], "args": args})
        assert r.status_code == 200, (method, r.get_json())
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert net.training


def _hold_lock(vis):
    """Hold the view's lock from another thread (a computation in progress)."""
    got, release = threading.Event(), threading.Event()

    def hold():
        with vis.lock:
            got.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    got.wait(10)
    return release, t


def test_busy_server_answers_503_instead_of_queueing_without_bound():
    vis = _vis(_net(), Limits(max_waiting_requests=1, max_wait_seconds=0.5))
    client = create_app(vis).test_client()
    client.get("/api/examples")  # predictions computed
    release, holder = _hold_lock(vis)
    try:
        out = {}

        def request(key):
            out[key] = _post(client, "/api/attribute", {"method": "Saliency", "examples": [0]})

        waiter = threading.Thread(target=request, args=("waited",), daemon=True)
        waiter.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        request("refused")  # one is already waiting: refused at once
        assert out["refused"].status_code == 503 and time.monotonic() - t0 < 0.4
        waiter.join(10)
        assert not waiter.is_alive() and out["waited"].status_code == 503  # waited 0.5 s, then 503
    finally:
        release.set()
        holder.join(10)
    assert _post(client, "/api/attribute", {"method": "Saliency", "examples": [0]}).status_code == 200


class _Slow(nn.Module):
    def __init__(self, net, delay):
        super().__init__()
        self.net = net
        self.delay = delay
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        time.sleep(self.delay)
        return self.net(x)


@pytest.fixture()
def server():
    handles = []

    def start(vis):
        h = start_server(vis, port=0, blocking=False)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


def test_work_of_a_disconnected_client_is_abandoned(server):
    slow = _Slow(_net(), 0.1).eval()
    vis = _vis(slow)
    vis.scores(0)  # predictions cached
    h = server(vis)
    body = json.dumps({"method": "IntegratedGradients", "examples": [0], "args": {"n_steps": 320}}).encode()
    # 320 steps in batches of 16: 20 forwards (2 s) if nobody stops it
    calls0 = slow.calls
    s = socket.create_connection(("127.0.0.1", h.port))
    s.sendall(b"POST /api/attribute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.3)
    s.close()  # the client gives up
    time.sleep(2.5)
    assert slow.calls - calls0 <= 6
    # the server is free again at once
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    conn.request("POST", "/api/attribute", json.dumps({"method": "Saliency", "examples": [0]}),
                 {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200


def test_chunked_body_over_the_limit_is_413(server):
    h = server(_vis(_net()))
    payload = json.dumps({"method": "Saliency", "examples": [0], "target": None, "args": {}}).encode()
    big = payload[:-1] + b", " + b'"pad": "' + b"x" * (70 * 1024) + b'"}'
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
    conn.putrequest("POST", "/api/attribute")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for i in range(0, len(big), 8192):
        chunk = big[i:i + 8192]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    assert len(big) > MAX_BODY_BYTES


def test_page_sends_only_the_arguments_of_the_chosen_preset(server):
    """The page hides (and does not send) epsilon / gamma where the LRP preset has none."""
    import os

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip(f"{chromium} not found (CI installs Debian's chromium with apt)")
    h = server(_vis(_net()))
    bodies = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.on("request", lambda r: bodies.append(r.post_data) if r.url.endswith("/api/attribute") else None)
            page.goto(h.url)
            page.wait_for_selector(".example")
            page.select_option("#method", "LRP")
            page.wait_for_selector("#args select[name=preset]")
            hidden = "(n) => document.querySelector(`#args [data-arg=${n}]`).parentElement.hidden"
            for preset, eps_hidden, gamma_hidden in (("epsilon_plus", False, True), ("zplus", True, True),
                                                     ("epsilon_gamma_box", False, False)):
                page.select_option("#args select[name=preset]", json.dumps(preset))
                assert page.evaluate(hidden, "epsilon") is eps_hidden
                assert page.evaluate(hidden, "gamma") is gamma_hidden
            page.select_option("#args select[name=preset]", json.dumps("zplus"))
            page.locator(".example input.pick").first.check()
            page.click("#run")
            page.wait_for_selector(".example img.heatmap")
        finally:
            browser.close()
    sent = json.loads(bodies[-1])["args"]
    assert sent["preset"] == "zplus" and "epsilon" not in sent and "gamma" not in sent
