"""``python -m wssl_zoo`` is the ``wssl-zoo`` command."""

import sys

from .cli import main

sys.exit(main())
