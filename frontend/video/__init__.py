"""Video media for the Videos API: MP4/thumbnail/spritesheet encoding and frame interpolation (torch-free)."""
