"""`dgate bench`: the same requests through in-process diffusers, Triton directly and the frontend.

One run on one machine: tritonserver and the frontend are started on free ports, every path is warmed
up, then measured at each concurrency level; the client's latency less the models' compute from
Triton's own statistics gives the per-step overhead (`dgate.bench.step_overhead`). See
`dgate.bench.run.run_bench`.
"""
