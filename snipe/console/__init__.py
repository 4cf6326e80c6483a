"""snipe-console: the command line (and later web page) for people running a SNIPE cluster."""
