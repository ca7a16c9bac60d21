"""Headless Chromium with the network cut off, for the offline slide and website tests.

Uses Debian's Chromium (``executable_path``, no browser download), as tests/test_browser.py
does. Every request that is not ``file://``, ``data:`` or to 127.0.0.1 is aborted and
recorded, so a page that reaches for a CDN fails the test instead of silently loading.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

from test_browser import CHROME_ARGS, CHROMIUM, _require_browser

LOCAL = ("file://", "data:", "blob:", "http://127.0.0.1:", "about:")


class OfflinePages:
    """Opens pages in one browser; ``failed`` lists every blocked or failed request."""

    def __init__(self, browser):
        self.browser = browser
        self.failed: list[str] = []
        self.errors: list[str] = []

    def open(self, url: str, width: int = 1280, height: int = 800):
        page = self.browser.new_page(viewport={"width": width, "height": height})
        page.route("**/*", self._route)
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        page.on("pageerror", lambda e: self.errors.append(f"{url}: {e}"))
        page.goto(url)
        return page

    def _route(self, route):
        url = route.request.url
        if url.startswith(LOCAL):
            route.continue_()
        else:
            self.failed.append(f"{url} (blocked: not local)")
            route.abort()


@contextlib.contextmanager
def offline_browser():
    """An ``OfflinePages`` on a headless Chromium (skips when there is no browser)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        try:
            yield OfflinePages(browser)
        finally:
            browser.close()


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
