"""``python -m wssl_zoo.pretrain``: see :mod:`wssl_zoo.pretrain.cli`."""

import sys

from .cli import main

sys.exit(main())
