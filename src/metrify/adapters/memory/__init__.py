"""In-process adapters: the embedded event bus and cache, and dict-backed stores used as fakes."""
