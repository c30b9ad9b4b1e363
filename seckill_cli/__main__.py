"""`python -m seckill_cli`: the `seckill` command without the installed script."""

import sys

from seckill_cli.cli import main

sys.exit(main())
