"""File adapters: CSV and JSON-lines reading sources, and export writers."""
