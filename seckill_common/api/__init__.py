"""API helpers: the error model, request checks, page tokens, time conversion."""
