"""captum_rap.insights in a real browser: Playwright (sync API) driving Debian's Chromium.

The page is served by the test from a background thread on a free port.  RAP runs on the
real demo view (``demo_visualizer``: EfficientNet-Lite0 with ImageNet weights on two of its
scikit-image photos); the ACD test uses the same demo view built around a small seeded CNN
on 64 px photos (ACD on Lite0 takes minutes on 2 cores) and the demo's text view (the
shipped LSTM).  No browser is downloaded: CI installs ``chromium`` with apt (``.ci/run``).
"""

import os

import pytest
import torch
from torch import nn

pytest.importorskip("flask")
pytest.importorskip("skimage")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found (CI installs Debian's chromium with apt)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def _tiny_imagenet_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 1000)).eval()


@pytest.fixture(scope="module")
def server():
    from captum_rap.insights.demo import DEMO_PHOTOS, demo_text_visualizer, demo_visualizer
    from captum_rap.insights.server import start_server
    from captum_rap.zoo import rotten_tomatoes_lstm

    pytest.importorskip("efficientnet_lite_pytorch")
    lite0 = demo_visualizer(photos=DEMO_PHOTOS[:2])
    images = demo_visualizer(photos=DEMO_PHOTOS[:4], size=64, model=_tiny_imagenet_cnn())
    text = demo_text_visualizer(rotten_tomatoes_lstm().examples[:2])
    handle = start_server({"lite0": lite0, "images": images, "text": text}, port=0, blocking=False)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            errors = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(server.url)
            pg.wait_for_selector(".example")
            yield pg
            assert not errors, errors
        finally:
            browser.close()


def _select_method(page, name):
    page.select_option("#method", name)
    page.wait_for_function("(n) => document.getElementById('method-desc').textContent.length > 0 && "
                           "document.getElementById('method').value === n", arg=name)


def test_rap_heatmaps_and_predictions(page):
    assert page.input_value("#view") == "lite0"
    cards = page.locator(".example")
    assert cards.count() == 2  # chelsea, coffee
    # predictions: top-3 with probabilities, for every photo
    preds = page.locator(".example li.pred")
    assert preds.count() == 6
    assert "%" in preds.first.inner_text()
    assert "tabby" in cards.nth(0).inner_text()  # chelsea's true label
    assert " cat: " in cards.nth(0).locator("ol.preds").inner_text()  # Lite0 sees a cat
    assert "espresso" in cards.nth(1).locator("ol.preds").inner_text()
    # a bad argument value shows the server's message, not a broken page
    _select_method(page, "RAP")
    page.fill("#args input[name=stabilizer]", "-1")
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent.includes('must lie in')")
    # RAP on the first two photos
    page.fill("#args input[name=stabilizer]", "0")
    cards.nth(0).locator("input.pick").check()
    cards.nth(1).locator("input.pick").check()
    page.click("#run")
    page.wait_for_selector(".example[data-index='1'] img.heatmap")
    assert page.locator("#error").inner_text() == ""
    heat = page.locator(".example[data-index='0'] img.heatmap")
    assert heat.evaluate("(img) => img.complete && img.naturalWidth") == 224
    assert page.locator("img.heatmap").count() == 2
    assert "RAP → tabby" in cards.nth(0).locator(".caption").first.inner_text()
    # the original stays beside the heat map
    assert cards.nth(0).locator("img.original").evaluate("(img) => img.naturalWidth") == 224


def test_acd_views_image_and_text(page):
    page.select_option("#view", "images")
    page.wait_for_function("document.querySelectorAll('.example').length === 4")
    _select_method(page, "ACD")
    page.fill("#args input[name=sweep_dim]", "16")  # 4 x 4 blocks
    page.click("#run")
    page.wait_for_selector("#acd-panel img.acd-overlay[src^='data:image/png']")
    levels = int(page.get_attribute("#acd-level", "max")) + 1
    assert levels >= 2
    shown = page.get_attribute("img.acd-overlay", "src")
    page.eval_on_selector("#acd-level", "(e) => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    assert page.get_attribute("img.acd-overlay", "src") != shown  # level 0 has no group
    assert page.locator("#acd-groups div").count() == 0
    page.eval_on_selector("#acd-level", "(e) => { e.value = e.max; e.dispatchEvent(new Event('input')); }")
    assert f"level {levels - 1} / {levels - 1}" in page.inner_text("#acd-level-label")
    assert page.locator("#acd-groups div").count() == 1  # the top level is one group
    # text: levels x words
    page.select_option("#view", "text")
    page.wait_for_function("document.querySelectorAll('.example .original-text').length === 2")
    _select_method(page, "ACD")
    page.click("#run")
    page.wait_for_selector("table.acd-text tr")
    rows = page.locator("table.acd-text tr")
    assert rows.count() == int(page.get_attribute("#acd-level", "max")) + 1
    words = page.locator(".example[data-index='0'] .original-text span").all_inner_texts()
    assert rows.first.locator("td").all_inner_texts() == words  # level 0: every word
    assert page.locator("table.acd-text tr.current").count() == 1
    assert page.locator("img.acd-text-png").evaluate("(img) => img.complete && img.naturalWidth > 0")
