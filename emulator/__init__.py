"""The Sidekick-class handset and everything that drives it."""
