"""`python -m activity_svc`: run the activity service until SIGTERM/SIGINT."""

from activity_svc.server import DEFINITION
from seckill_common.runtime.server import main

if __name__ == "__main__":
    main(DEFINITION)
