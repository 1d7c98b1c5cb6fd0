"""Composition and what users see: the App, the analysis loop, catalog reviews, HTTP, metrics, alerts,
the admin console, the CLI and the CI gate."""
