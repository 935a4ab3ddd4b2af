"""Drive the playground page (`GET /`) in headless Chromium and report what it showed.

`see_playground(base_url, prompt=...)` opens the page of any running frontend (a fake engine's or a
real Triton's), picks a model, fills the form, presses Generate (or Edit, with `edit_image`) and
returns a `PlaygroundRun`: the models offered, the images shown (decoded by the browser: natural
sizes), the seed shown, the partial images seen, the requests the page made and what it sent.

The browser is Debian's `chromium` (`make browser` installs it) driven through the `playwright`
package; `playwright install` is never run, so nothing downloads a browser build.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Request, sync_playwright


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium (no sandbox: tests may run as root in a container)."""
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is not installed: run `make browser` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class SentRequest:
    method: str
    url: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PlaygroundRun:
    models: list[str]  # the model <select>'s options, in order
    state: str  # the page's data-state once it settled: "done" or "error"
    images: list[dict[str, Any]]  # each final <img>: src (a data: URL), width and height as decoded
    seed: str  # the seed shown ("" if none)
    partials: int  # partial images shown while it ran
    transport: str  # how the images came: "sse" (the event stream) or "json" (the stream was refused)
    status: str  # the status line
    error: str  # the error box ("" when hidden)
    requests: list[str] = field(default_factory=list)  # every URL the page loaded or fetched
    sent: list[SentRequest] = field(default_factory=list)  # the POSTs to /v1/images/*
    console_errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    screenshot: Path | None = None


def see_playground(
    base_url: str,
    *,
    prompt: str,
    model: str | None = None,
    n: int | None = None,
    size: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    negative_prompt: str | None = None,
    partial_images: int = 0,
    edit_image: Path | None = None,
    edit_mask: Path | None = None,
    strength: float | None = None,
    api_key: str | None = None,
    screenshot: Path | None = None,
    browser: Browser | None = None,
    timeout_s: float = 20.0,
) -> PlaygroundRun:
    """One generation (or, with `edit_image`, one edit) through the page; None fields stay empty
    (the server's defaults; an empty seed makes the page send a random one). `api_key` is typed into the
    page's key field once it loaded (the models are listed again with it)."""
    form = dict(locals())
    with ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(chromium())
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        stack.callback(context.close)
        return _drive(context.new_page(), base_url, form, timeout_s)


def _drive(page: Page, base_url: str, form: dict[str, Any], timeout_s: float) -> PlaygroundRun:
    timeout_ms = timeout_s * 1000
    page.set_default_timeout(timeout_ms)
    requests: list[str] = []
    sent: list[SentRequest] = []
    errors: list[str] = []

    def on_request(request: Request) -> None:
        requests.append(request.url)
        if request.method == "POST" and "/v1/images/" in request.url:
            sent.append(SentRequest(request.method, request.url, request.headers.get("content-type", ""),
                                    request.post_data_buffer or b""))

    page.on("request", on_request)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{base_url.rstrip('/')}/")
    page.wait_for_selector("#app:not([data-state=loading])")
    if form["api_key"] is not None:
        page.fill("#api-key", form["api_key"])
        page.dispatch_event("#api-key", "change")  # the handler sets data-state=loading before it returns
        page.wait_for_selector("#app:not([data-state=loading])")
    models = page.locator("#model option").evaluate_all("options => options.map(o => o.value)")
    if page.get_attribute("#app", "data-state") == "error":  # the model list failed
        return _result(page, models, requests, sent, errors, form["screenshot"])

    if form["model"] is not None:
        page.select_option("#model", form["model"])
    if form["edit_image"] is not None:
        page.click("label:has(#mode-edit)")  # the radio itself is hidden behind its label
        page.set_input_files("#edit-image", str(form["edit_image"]))
        if form["edit_mask"] is not None:
            page.set_input_files("#edit-mask", str(form["edit_mask"]))
        if form["strength"] is not None:
            page.fill("#strength", str(form["strength"]))
    page.fill("#prompt", form["prompt"])
    for selector, value in (("#n", form["n"]), ("#size", form["size"]), ("#steps", form["steps"]),
                            ("#guidance", form["guidance"]), ("#seed", form["seed"]),
                            ("#negative-prompt", form["negative_prompt"])):
        if value is not None:
            page.fill(selector, str(value))
    if page.is_enabled("#partial-images"):  # disabled for a model that says it cannot stream previews
        page.select_option("#partial-images", str(form["partial_images"]))
    page.click("#generate")
    page.wait_for_selector("#app[data-state=done], #app[data-state=error]")
    # The browser decodes the images asynchronously: wait until every final one has its pixels.
    page.wait_for_function("[...document.querySelectorAll('#results img.final')].every(i => i.complete)")
    return _result(page, models, requests, sent, errors, form["screenshot"])


def _result(page: Page, models: list[str], requests: list[str], sent: list[SentRequest], errors: list[str],
            screenshot: Path | None) -> PlaygroundRun:
    images = page.locator("#results img.final").evaluate_all(
        "imgs => imgs.map(i => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight}))"
    )
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    error_box = page.locator("#error")
    return PlaygroundRun(
        models=models,
        state=page.get_attribute("#app", "data-state") or "",
        images=images,
        seed=(page.text_content("#seed-value") or "") if page.is_visible("#seed-out") else "",
        partials=int(page.get_attribute("#results", "data-partials") or 0),
        transport=page.get_attribute("#results", "data-transport") or "",
        status=page.text_content("#status") or "",
        error=(error_box.text_content() or "") if error_box.is_visible() else "",
        requests=list(requests),
        sent=list(sent),
        console_errors=list(errors),
        screenshot=screenshot,
    )
