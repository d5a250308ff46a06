"""`python -m dd_assets.cli`: the same as the `dd-assets` console script."""

import sys

from dd_assets.cli.main import main

sys.exit(main())
