"""Built-in mapper modules, one per backend API; custom mappers may live here too (see README)."""
