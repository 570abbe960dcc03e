"""The `halaxy-bridge` command line."""
