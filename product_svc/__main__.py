"""`python -m product_svc`: run the product service until SIGTERM/SIGINT."""

from product_svc.server import DEFINITION
from seckill_common.runtime.server import main

if __name__ == "__main__":
    main(DEFINITION)
