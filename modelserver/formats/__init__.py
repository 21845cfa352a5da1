"""One module per model format, each loading its files through the format's own library."""
