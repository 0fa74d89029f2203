"""Command-line interface (``vfmtok``). The only place that configures logging or prints."""
