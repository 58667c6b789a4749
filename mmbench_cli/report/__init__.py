"""mmbench report package."""
