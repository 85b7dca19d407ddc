"""Data sources: each module alone imports the library it talks through."""
