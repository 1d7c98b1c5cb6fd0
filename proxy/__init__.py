"""pgloupe's proxy: the protocol, the relay, the workers, the service and the demo (docs/architecture.md)."""
