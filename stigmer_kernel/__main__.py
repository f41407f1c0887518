"""``python -m stigmer_kernel`` is the ``stigmer`` command."""

from __future__ import annotations

import sys

from .cli.main import main

sys.exit(main())
