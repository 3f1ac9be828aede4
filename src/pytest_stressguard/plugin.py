"""pytest11 entry point (filled in by the foundation work)."""
