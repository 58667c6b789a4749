"""mmbench evaluate package."""
