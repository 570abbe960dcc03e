"""What the people who run the bridge use: dead letters and replay, status, stored upgrades."""
