"""ActivityService: seckill activities and the Seckill call."""
