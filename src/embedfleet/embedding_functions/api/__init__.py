"""API providers: embedding functions that call a remote service over HTTP."""
