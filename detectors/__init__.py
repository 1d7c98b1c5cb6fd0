"""Pure analysis: statement events in, findings out; nothing of proxy/ but proxy/events.py."""

import proxy  # noqa: F401  (its finder chooses between the compiled detectors and their source: proxy.COMPILED)
