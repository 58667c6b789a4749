"""mmbench data package."""
