"""Pure analysis: statement events in, findings out; nothing of proxy/ but proxy/events.py (and the
package itself, for its finder of compiled modules)."""

import proxy  # noqa: F401  (its finder chooses between the compiled detectors and their source: proxy.COMPILED)
