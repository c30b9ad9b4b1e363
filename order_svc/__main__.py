"""`python -m order_svc`: run the order service until SIGTERM/SIGINT."""

from order_svc.server import DEFINITION
from seckill_common.runtime.server import main

if __name__ == "__main__":
    main(DEFINITION)
