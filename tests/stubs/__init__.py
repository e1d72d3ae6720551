"""Small upstream servers that behave like the real backends, for the tests."""
