"""The try-it page at ``/``, driven by headless Chromium (Debian's, via Playwright) against a real Serve.

The deployment requires an API key (from ``$SENTIMENT_API_KEY``, as every deployment takes it):
the page must show its key field, fail clearly without the key, and predict with it. It scores
long reviews in chunks (``long_reviews``), which the page says. A screenshot goes to
test-artifacts/serve_page.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from sentiment.attribution import explain
from sentiment.predict import Predictor
from sentiment.report import SCENARIOS
from serve.schemas import API_KEY_ENV
from tests.support import make_checkpoint, start_serve, stop_serve

pytestmark = [pytest.mark.ray, pytest.mark.browser]

KEY = "page-test-key"
REVIEW = "A fun brain candy movie...good dialog."
NEGATIVE_SAMPLE = "What a waste of time. The plot was confusing, acting was terrible, and I couldn't wait for it to end."


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("serve-page") / "model")


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(API_KEY_ENV, KEY)
        url = start_serve({"checkpoint": str(checkpoint), "num_cpus": 0.5, "long_reviews": "chunks"})
        try:
            yield url
        finally:
            stop_serve()


def expect_prediction(page: Page, predictor: Predictor, text: str) -> None:
    """The label and one bar per class, with the in-process Predictor's probabilities."""
    (expected,) = predictor.predict_details([text])
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#label")).to_have_text(expected.label)
    bars = page.locator(".bar")
    expect(bars).to_have_count(len(expected.probabilities))
    for name, p in expected.probabilities.items():
        expect(page.locator(f'.bar[data-label="{name}"] .pct')).to_have_text(f"{100 * p:.1f}%")


def test_page_predicts_with_the_key_and_draws_probability_bars(
    server: str, browser: Browser, checkpoint: Path, artifacts: Path
) -> None:
    predictor = Predictor.load(checkpoint, long_reviews="chunks")
    page = browser.new_page(viewport={"width": 900, "height": 820})
    js_errors: list[str] = []
    page.on("pageerror", lambda err: js_errors.append(str(err)))
    page.goto(server + "/")
    expect(page.locator("#key-row")).to_be_visible()  # /healthz says a key is required

    page.fill("#text", REVIEW)
    page.click("#predict")
    expect(page.locator("#error")).to_contain_text("API key")
    expect(page.locator("#result")).to_be_hidden()

    page.fill("#key", KEY)
    page.click("#predict")
    expect_prediction(page, predictor, REVIEW)
    assert page.evaluate("sessionStorage.getItem('sentiment-api-key')") == KEY

    page.reload()  # the key survives in this tab's sessionStorage; a sample is one click
    expect(page.locator("#key")).to_have_value(KEY)
    page.click('.sample[data-kind="negative"]')
    expect(page.locator("#text")).to_have_value(NEGATIVE_SAMPLE)
    expect_prediction(page, predictor, NEGATIVE_SAMPLE)
    expect(page.locator("#model")).to_contain_text("negative / positive")
    long_review = " ".join([NEGATIVE_SAMPLE, REVIEW] * 6)  # several windows of the checkpoint's 64 tokens
    (whole,) = predictor.predict_details([long_review])
    assert whole.windows >= 3 and not whole.truncated
    page.fill("#text", long_review)
    page.click("#predict")
    expect(page.locator("#tokens")).to_have_text(f"{whole.num_tokens} tokens (scored in {whole.windows} windows)")
    expect_prediction(page, predictor, long_review)
    page.screenshot(path=str(artifacts / "serve_page.png"), full_page=True)
    assert js_errors == []


def test_the_footer_link_opens_the_api_docs_served_offline(server: str, browser: Browser) -> None:
    """The page's /docs link: Swagger UI from the endpoint's own assets, /v1/predict with its limits."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) else elsewhere.append(r.url))
    page.goto(server + "/")
    page.click("a[href='/docs']")
    page.wait_for_url(server + "/docs")
    operation = page.locator("#operations-default-predict_v1_predict_post")
    expect(operation).to_contain_text("/v1/predict")
    operation.locator(".opblock-summary-control").click()
    expect(operation).to_contain_text("At most 64 texts of at most 20000 characters each")
    codes = operation.locator("tr.response").evaluate_all("rows => rows.map(r => r.dataset.code)")
    assert {"200", "401", "413", "415", "422"} <= set(codes)
    assert elsewhere == []  # no CDN: every script and style came from the endpoint


def test_the_page_highlights_each_sample_reviews_key_words(
    server: str, browser: Browser, checkpoint: Path, artifacts: Path
) -> None:
    """The key words the endpoint returns (explain) are the in-process explanation's, marked in the review."""
    predictor = Predictor.load(checkpoint, long_reviews="chunks")
    page = browser.new_page(viewport={"width": 900, "height": 900})
    page.goto(server + "/")
    page.fill("#key", KEY)
    expect(page.locator("#explain-row")).to_be_visible()  # /healthz says this deployment can explain
    expect(page.locator("#explain")).not_to_be_checked()  # explanations cost more: the page asks only when told
    page.check("#explain")
    for kind, (text, _) in zip(("positive", "negative", "mixed"), SCENARIOS):
        (expected,) = explain(predictor, [text], top_k=5, n_steps=16)  # the deployment's defaults
        words = [k.word for k in expected.key_tokens]
        page.click(f'.sample[data-kind="{kind}"]')
        expect(page.locator("#key-tokens")).to_have_text(", ".join(words), timeout=60_000)  # integrated gradients on 2 busy cores
        marked = page.locator("#review mark").evaluate_all("marks => marks.map(m => m.dataset.word)")
        assert set(marked) == set(words) and all(w.lower() in text.lower() for w in words)
    page.screenshot(path=str(artifacts / "serve_page_key_words.png"), full_page=True)
