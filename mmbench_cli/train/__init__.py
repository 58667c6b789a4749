"""mmbench train package."""
