"""`dgate bench`: the same requests through in-process diffusers, Triton directly and the frontend.

One run on one machine: tritonserver and the frontend are started on free ports, every path is warmed
up, then measured at each concurrency level; Triton's own statistics give the per-step cost of the
denoiser's BLS loop. See `dgate.bench.run.run_bench`.
"""
