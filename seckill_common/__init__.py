"""Plumbing shared by the three seckill services: config, DB pool, server lifecycle,
interceptors, error mapping and clients. It never imports a service."""
