"""The web page in headless Chromium (Debian's `chromium`, driven by Playwright's Python package
pointed at it; no Playwright browser download): the page asks for the token, a prompt is
entered, the live progress runs, the image shows with its metadata, and the downloaded PNG
carries the provenance record; with two models served, the model picker chooses which one
makes the image. A screenshot is saved as a test artefact: under the test's tmp
folder, and also in $PICTOR_TEST_ARTIFACTS when that is set.

Skipped when chromium or playwright is missing (apt-get install chromium;
.venv/bin/pip install playwright).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from pipeline_support import second_tiny_model_dir, tiny_model_dir
from serve_support import TOKEN, running_app, running_server, wait_ready

from pictor.pipeline import load_pipeline
from pictor.provenance import DIGITAL_SOURCE_TYPE, read_digital_source_type, read_provenance
from pictor.serving.app import create_app
from pictor.serving.settings import ServeSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# flags for a closed network (no background connections) and running as root in a container
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PROMPT = "a red circle"

# CI sets PICTOR_REQUIRE_BROWSER=1 (.ci/run installs chromium): there a missing browser fails.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("PICTOR_REQUIRE_BROWSER"),
    reason="needs Debian's chromium (apt-get install chromium)")


def open_page(browser, url: str):
    """(the page at url, the list its script errors are collected in)."""
    page = browser.new_page(accept_downloads=True)
    page.set_default_timeout(90_000)
    console_errors: list[str] = []
    page.on("pageerror", lambda err: console_errors.append(str(err)))
    page.goto(url + "/")
    return page, console_errors


def test_page_generates_an_image_with_its_metadata(tmp_path, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    pipe = load_pipeline(tiny_model_dir(tmp_path_factory))
    settings = ServeSettings(token=TOKEN, preview_every_steps=1)
    with running_server(settings, pipe) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, console_errors = open_page(browser, url)
            # the server wants a token: the page says so and opens the token box
            page.wait_for_selector("#token-box[open]")
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.wait_for_selector("#sampler option[value='dpm++2m']", state="attached")
            page.fill("#prompt", PROMPT)
            page.fill("#seed", "5")
            page.fill("#steps", "6")
            assert not page.is_checked("#layout")  # layout guidance is off by default
            page.check("#layout")
            page.uncheck("#layout")
            page.click("#generate")
            figure = page.wait_for_selector("figure.result img")
            assert page.evaluate("(img) => img.complete && img.naturalWidth", figure) == \
                pipe.image_size
            assert page.text_content("dd[data-field='prompt']") == PROMPT
            assert page.text_content("dd[data-field='seed']") == "5"
            assert page.text_content("dd[data-field='layout guidance']") == "off"
            assert "AI-generated" in page.text_content("figure.result figcaption")
            assert page.get_attribute("article.job", "data-status") == "succeeded"
            with page.expect_download() as download:
                page.click("a.download")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            record = read_provenance(saved)
            assert (record.prompt, record.seed, record.num_steps) == (PROMPT, 5, 6)
            assert record.extra["layout"] is False
            assert read_digital_source_type(saved) == DIGITAL_SOURCE_TYPE
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert not console_errors, console_errors
        finally:
            browser.close()
    artefacts = os.environ.get("PICTOR_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)
    assert shot.stat().st_size > 0


def test_page_opened_while_the_model_loads_waits_for_it(tmp_path_factory):
    """`pictor serve` listens before its model has loaded: the page says so and fills its form
    by itself once the model is there (no reload)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    model_dir = tiny_model_dir(tmp_path_factory)
    release = threading.Event()

    def load_when_released():
        release.wait(120)
        return load_pipeline(model_dir)

    app = create_app(ServeSettings(), loader=load_when_released)
    with running_app(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(url + "/")
            # the page's answer to the 503 (not the static "loading model…" placeholder)
            page.wait_for_function(
                "document.getElementById('message').textContent.includes('retries by itself')")
            assert page.locator("#sampler option").count() == 0
            assert "error" not in (page.get_attribute("#message", "class") or "")
            release.set()
            page.wait_for_selector("#sampler option[value='dpm++2m']", state="attached")
            assert "loading" not in page.text_content("#model-info")
        finally:
            browser.close()


def test_page_model_picker_chooses_the_model(tmp_path_factory):
    """Two models served: the picker lists both (the first chosen), the second is picked, and
    the image's record and the job card name it; its pixels are that model's."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import numpy as np
    from PIL import Image

    pipes = [load_pipeline(tiny_model_dir(tmp_path_factory)),
             load_pipeline(second_tiny_model_dir(tmp_path_factory))]
    app = create_app(ServeSettings(), models=[(None, p) for p in pipes])
    with running_app(app) as url, sync_api.sync_playwright() as pw:
        wait_ready(url)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, console_errors = open_page(browser, url)
            page.wait_for_selector("#sampler option[value='dpm++2m']", state="attached")
            names = page.eval_on_selector_all("#model option", "(os) => os.map((o) => o.value)")
            assert names == [p.model_name for p in pipes]
            assert page.input_value("#model") == pipes[0].model_name
            assert pipes[0].model_name in page.text_content("#model-info")
            # the picker has an accessible name: its label
            assert page.get_by_label("Model").evaluate("(el) => el.id") == "model"
            page.select_option("#model", pipes[1].model_name)
            assert pipes[1].model_name in page.text_content("#model-info")
            page.fill("#prompt", PROMPT)
            page.fill("#seed", "5")
            page.fill("#steps", "4")
            page.click("#generate")
            page.wait_for_selector("article.job[data-status='succeeded'] figure.result img")
            assert page.text_content("dd[data-field='model']").startswith(
                pipes[1].model_name + " ")
            assert page.text_content("article.job .job-model") == "by " + pipes[1].model_name
            assert pipes[1].model_name in page.get_attribute("figure.result img", "alt")
            with page.expect_download() as download:
                page.click("a.download")
            record = read_provenance(download.value.path())
            assert (record.model_name, record.model_sha256) == (pipes[1].model_name,
                                                                pipes[1].model_sha256)
            expected = pipes[1].generate(PROMPT, seed=5, num_steps=4)[0].image
            served = Image.open(download.value.path()).convert("RGB")
            assert np.array_equal(np.asarray(served), np.asarray(expected))
            assert not console_errors, console_errors
        finally:
            browser.close()
