"""``python -m proxy``: the ``pgloupe`` command (proxy.service.cli)."""

import sys

from proxy.service.cli import main

sys.exit(main())
