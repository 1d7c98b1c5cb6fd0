"""Pure analysis: statement events in, findings out; nothing of proxy/ but proxy/events.py."""
