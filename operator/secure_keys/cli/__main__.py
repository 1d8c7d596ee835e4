"""``python -m secure_keys.cli``: the same as the ``secure-keys`` command."""

from __future__ import annotations

import sys

from secure_keys.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
