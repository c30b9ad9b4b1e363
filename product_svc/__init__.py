"""ProductService: products and their stock."""
