"""The page, end to end, in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium): start the server, load the page, upload an image, type a vocabulary, check
the labels, move the threshold, click a detection, look at it on a phone-sized screen.
Screenshots go to $VILD_TEST_ARTIFACTS (default build/test-artifacts/).

No browser here: the tests skip LOUDLY (a warning, the skip reason and a line on stderr);
VILD_REQUIRE_BROWSER=1 turns that skip into a failure. `make test` installs the browser."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.fake import FakeDetector  # noqa: E402
from tests.service.server import running  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("VILD_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))


def _loud_skip(reason: str):
    message = f"BROWSER TEST SKIPPED: {reason}. Install it with `make test` (as root) or " \
              "`apt-get install chromium chromium-driver && pip install selenium`."
    if os.environ.get("VILD_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (VILD_REQUIRE_BROWSER=1)")
    warnings.warn(message, UserWarning, stacklevel=2)
    print(f"\n*** {message}\n", file=sys.__stderr__, flush=True)
    pytest.skip(message)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _loud_skip("the Python package selenium is not installed")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if not chromium or not driver_path:
        _loud_skip(f"no Chromium / ChromeDriver on this machine (chromium={chromium}, chromedriver={driver_path})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    except Exception as e:  # noqa: BLE001 - any failure to start is a skip, loudly
        _loud_skip(f"Chromium did not start ({' '.join(str(e).split())[:300]})")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _two_blob_png(path: Path) -> Path:
    a = np.full((120, 160, 3), 40, np.uint8)
    a[15:70, 10:70] = (255, 0, 0)
    a[60:110, 90:150] = (0, 0, 255)
    Image.fromarray(a).save(path)
    return path


def _wait(driver, predicate, timeout=60, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        from selenium.common.exceptions import StaleElementReferenceException

        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate(d))
    except Exception:
        status = driver.find_element("id", "status").text
        _shot(driver, "page-failure.png")
        raise AssertionError(
            f"timed out waiting for {what}; page status: {status!r}; labels shown: {_labels(driver)}"
        ) from None


def _labels(driver) -> list[str]:
    # read in one script: the list is re-rendered under us, so element handles go stale
    return driver.execute_script(
        "return [...document.querySelectorAll('#list .det-label')].map(e => e.textContent)")


def _type(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    el = driver.find_element("id", element_id)
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.BACK_SPACE)  # as a person would: fires "input", unlike clear()
    if text:
        el.send_keys(text)


def _set_threshold(driver, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById('threshold'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));", str(value))


def _console_errors(driver) -> list[str]:
    try:
        return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    except Exception:  # noqa: BLE001 - not every driver keeps the log
        return []


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_page_end_to_end_with_a_fake_detector(browser, tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    _two_blob_png(examples / "blobs.png")
    det = FakeDetector()
    app = create_app(det, ServiceConfig(), examples_dir=examples)
    with running(app) as url:
        browser.set_window_size(1280, 900)
        browser.get(url + "/")
        _wait(browser, lambda d: "fake" in d.find_element("id", "model").text, what="the model name")
        # upload through the file input, then type a vocabulary
        browser.find_element("id", "file").send_keys(str(examples / "blobs.png"))
        _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready"),
              what="the first result")
        assert det.embed_calls == 1
        _type(browser, "vocabulary", "red ball, blue box, cat")
        _wait(browser, lambda d: sorted(_labels(d)) == ["blue box", "red ball"], what="the labels red ball, blue box")
        # the threshold filters in the page: no request, no detector pass
        queries = det.query_calls
        _set_threshold(browser, 0.02)
        labels = _labels(browser)
        assert "cat" in labels and len(labels) > 2
        _set_threshold(browser, 0.95)
        assert _labels(browser) == []
        _set_threshold(browser, 0.3)
        assert sorted(_labels(browser)) == ["blue box", "red ball"]
        assert det.query_calls == queries
        # attributes change the names, still without a detector pass
        _type(browser, "attributes", "red")
        _wait(browser, lambda d: "red red ball" in _labels(d), what="attribute labels")
        _type(browser, "attributes", "")
        _wait(browser, lambda d: sorted(_labels(d)) == ["blue box", "red ball"], what="labels without attributes")
        assert det.embed_calls == 1
        # click a detection in the list: its top categories
        browser.find_element("css selector", "#list li.det").click()
        _wait(browser, lambda d: d.find_element("id", "detail").is_displayed(), what="the top categories")
        top = browser.execute_script(
            "return [...document.querySelectorAll('#top li.top-category span:first-child')].map(e => e.textContent)")
        assert len(top) >= 2 and top[0] in ("red ball", "blue box")
        # clicking the canvas inside the blue blob selects the blue box
        canvas = browser.find_element("id", "canvas")
        w = canvas.size["width"]
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element_with_offset(
            canvas, int((120 / 160 - 0.5) * w), int((85 / 120 - 0.5) * canvas.size["height"])).click().perform()
        _wait(browser, lambda d: "blue box" in d.find_element("css selector", "#list li.selected").text,
              what="the clicked detection")
        shot = _shot(browser, "page-desktop.png")
        # the masks are drawn: the canvas has blue-tinted pixels where the blue box is
        assert shot.stat().st_size > 5000
        # the bundled-example buttons upload the example
        browser.find_element("css selector", "#examples button.example").click()
        _wait(browser, lambda d: det.embed_calls == 2 and sorted(_labels(d)) == ["blue box", "red ball"],
              what="the example's labels")
        # a phone-sized screen: nothing wider than the screen, everything still there
        browser.set_window_size(390, 844)
        time.sleep(0.3)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
        assert browser.find_element("id", "canvas").size["width"] <= 390
        browser.execute_script("document.getElementById('stage').scrollIntoView()")
        _shot(browser, "page-phone.png")
        # a server error shows in the page, it does not break it
        _type(browser, "vocabulary", "boom-user")
        _wait(browser, lambda d: "boom-user is not allowed" in d.find_element("id", "status").text,
              what="the error message")
        errors = [e for e in _console_errors(browser) if "/query" not in e]  # the 400 we asked for
        assert errors == [], errors


def test_page_forgets_a_refused_upload(browser, tmp_path):
    """After the server refuses a file, the page shows no stale image or boxes, and later
    vocabulary edits do not send the bad file again."""
    examples = tmp_path / "examples"
    examples.mkdir()
    _two_blob_png(examples / "blobs.png")
    (tmp_path / "bad.png").write_text("not an image at all")
    det = FakeDetector()
    with running(create_app(det, ServiceConfig(), examples_dir=examples)) as url:
        browser.get(url + "/")
        _wait(browser, lambda d: "fake" in d.find_element("id", "model").text, what="the model name")
        browser.find_element("id", "file").send_keys(str(examples / "blobs.png"))
        _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready"), what="a result")
        _type(browser, "vocabulary", "red ball, blue box")
        _wait(browser, lambda d: sorted(_labels(d)) == ["blue box", "red ball"], what="the labels")
        browser.find_element("id", "file").send_keys(str(tmp_path / "bad.png"))
        _wait(browser, lambda d: "Choose another image" in d.find_element("id", "status").text,
              what="the upload error")
        assert browser.find_element("id", "canvas").get_attribute("data-empty") == "true"
        assert _labels(browser) == []
        uploads = "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/v1/images')).length"
        sent = browser.execute_script(uploads)
        _type(browser, "vocabulary", "cat, dog")
        time.sleep(1.0)  # past the page's 250 ms debounce
        assert browser.execute_script(uploads) == sent  # the bad file was not sent again
        assert "Choose another image" in browser.find_element("id", "status").text


def test_page_with_the_bundled_model(browser):
    """The bundled ShapeWorld model and its bundled example: the page shows exactly the labels
    the Python API finds in it. The model ships with the package: a broken one fails here."""
    from vild.inference import Detector, load_image

    det = Detector.from_pretrained()
    examples = [p for p in det.examples if Path(p).is_file()]
    assert examples, "the bundled model has no example images"
    example = Path(examples[0])
    vocabulary = det.default_vocabulary
    api = det.detect(load_image(example), vocabulary, threshold=0.3, max_detections=300)[0]
    expected = sorted(set(api.label_names or []))
    assert expected, f"the bundled model finds nothing in {example.name} at threshold 0.3"
    with running(create_app(det, ServiceConfig())) as url:
        browser.set_window_size(1280, 900)
        browser.get(url + "/")
        _wait(browser, lambda d: d.find_elements("css selector", "#examples button.example"), what="example buttons")
        for b in browser.find_elements("css selector", "#examples button.example"):
            if b.text == example.name:
                b.click()
                break
        _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready"), what="a result")
        _type(browser, "vocabulary", ", ".join(vocabulary))
        _set_threshold(browser, 0.3)
        _wait(browser, lambda d: sorted(set(_labels(d))) == expected,
              what=f"the labels {expected}", timeout=120)
        _shot(browser, "page-bundled-model.png")


def _drag(driver, element, start, end, image_size):
    """Press at `start`, move, release at `end` (image pixels of an `image_size` (w, h) image
    shown in `element`), with a real mouse through ActionChains."""
    from selenium.webdriver.common.action_chains import ActionChains

    w, h = element.size["width"], element.size["height"]
    iw, ih = image_size

    def offset(p):  # Selenium 4 offsets are from the element's centre
        return int((p[0] / iw - 0.5) * w), int((p[1] / ih - 0.5) * h)

    (x0, y0), (x1, y1) = offset(start), offset(end)
    ActionChains(driver).move_to_element_with_offset(element, x0, y0).click_and_hold() \
        .move_by_offset((x1 - x0) // 2, (y1 - y0) // 2).move_by_offset(x1 - x0 - (x1 - x0) // 2, y1 - y0 - (y1 - y0) // 2) \
        .release().perform()


def test_page_finds_a_drawn_example_in_another_image(browser, tmp_path):
    """Draw a box around the red blob of one image, name it, then open another image: the
    example's label marks that image's red blob (and only it); a click still selects, and
    removing the example removes its label."""
    first = _two_blob_png(tmp_path / "first.png")  # red at x 10..70, y 15..70; blue lower right
    a = np.full((120, 160, 3), 40, np.uint8)
    a[70:110, 20:60] = (255, 0, 0)  # red elsewhere
    a[10:50, 100:150] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "second.png")
    det = FakeDetector()
    browser.get("about:blank")  # the last test's page must not call its stopped server during this one
    _console_errors(browser)  # read (and so drop) what earlier tests left in the browser's log
    with running(create_app(det, ServiceConfig())) as url:
        browser.set_window_size(1280, 900)
        browser.get(url + "/")
        _wait(browser, lambda d: "fake" in d.find_element("id", "model").text, what="the model name")
        browser.find_element("id", "file").send_keys(str(first))
        _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready"), what="the first result")
        _type(browser, "vocabulary", "square")  # no name mentions a colour: only the example can
        _wait(browser, lambda d: _labels(d) == ["square", "square"], what="the vocabulary's labels")
        canvas = browser.find_element("id", "canvas")
        assert not browser.find_element("id", "exemplar-form").is_displayed()
        _drag(browser, canvas, (5, 10), (75, 75), (160, 120))
        _wait(browser, lambda d: d.find_element("id", "exemplar-form").is_displayed(), what="the name field")
        assert browser.find_element("id", "exemplar-name") == browser.switch_to.active_element
        assert browser.find_elements("css selector", "#list li.selected") == []  # the drag selected nothing
        _shot(browser, "page-exemplar-drawn.png")
        browser.find_element("id", "exemplar-name").send_keys("my thing")
        browser.find_element("id", "exemplar-add").click()
        # found in the image it was drawn on ...
        _wait(browser, lambda d: sorted(_labels(d)) == ["my thing", "square", "square"], what="the example's label")
        sent = det.last_call["exemplars"]
        assert [e.name for e in sent] == ["my thing"] and det.exemplar_colour(sent[0]) == "red"
        x0, y0, x1, y1 = sent[0].box
        assert abs(x0 - 5) < 3 and abs(y0 - 10) < 3 and abs(x1 - 75) < 3 and abs(y1 - 75) < 3, sent[0].box
        assert [li.text for li in browser.find_elements("css selector", "#exemplar-list .exemplar-name")] == ["my thing"]
        # ... and in another image, on its red blob only, by the first image's id
        embeds = det.embed_calls
        browser.find_element("id", "file").send_keys(str(tmp_path / "second.png"))
        _wait(browser, lambda d: det.embed_calls == embeds + 1 and sorted(_labels(d)) == ["my thing", "square", "square"],
              what="the example's label in the second image")
        # a click (no drag) still selects: on the red blob, the example's detection
        from selenium.webdriver.common.action_chains import ActionChains

        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(browser).move_to_element_with_offset(canvas, int((40 / 160 - 0.5) * w),
                                                          int((90 / 120 - 0.5) * h)).click().perform()
        _wait(browser, lambda d: "my thing" in d.find_element("css selector", "#list li.selected").text,
              what="the example's detection on the red blob")
        assert not browser.find_element("id", "exemplar-form").is_displayed()
        _shot(browser, "page-exemplar-found.png")
        # removing the example removes its label
        browser.find_element("css selector", "#exemplar-list .exemplar-remove").click()
        _wait(browser, lambda d: _labels(d) == ["square", "square"], what="labels without the example")
        assert "exemplars" not in det.last_call
        errors = [e for e in _console_errors(browser) if url in e]  # this page's, not a stopped server's
        assert errors == [], errors
