"""The processes of halaxy-bridge: receiver, workers, sandbox and CLI."""
