"""``python -m service``: the same as the ``lipwass`` command."""

import sys

from service.cli import main

sys.exit(main())
