"""mmbench ablate package."""
