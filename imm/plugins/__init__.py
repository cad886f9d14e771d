"""Plugins: hookspecs, the plugin manager, and the built-in providers and routers."""
