"""The Videos API behind its routes (torch-free): request schemas and uploads, the job service and worker
pool, and the media (MP4/thumbnail/spritesheet encoding, frame interpolation)."""
