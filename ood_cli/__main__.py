"""`python -m ood_cli`: the `ood` command without the console script."""

import sys

from ood_cli.main import main

sys.exit(main())
