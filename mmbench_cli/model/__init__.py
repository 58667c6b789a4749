"""mmbench model package."""
