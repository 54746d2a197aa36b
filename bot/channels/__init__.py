"""Chat-platform adapters: each one translates a platform's wire format at the edge."""
