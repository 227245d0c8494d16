"""Browser tests: the node's web app and the OHIF viewer in headless Chromium (Playwright)."""
