"""OrderService: users' orders, and cancelling them."""
