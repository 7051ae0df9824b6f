"""The `cyclerd` command line: thin commands over the engine, the store and the analysis."""
