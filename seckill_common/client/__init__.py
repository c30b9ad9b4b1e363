"""The client side: how our services and tools dial (TLS, peers\x27 channels) and retry."""
