"""LoRA by weight refit: adapter files -> per-layer deltas -> the live weights of a served model.

- `request`: which adapters a request runs with (the `lora` tensor's text) and where files may live;
- `adapter_file`: a diffusers/peft or kohya `.safetensors` -> low-rank factors per component layer;
- `weight_map`: the PyTorch layer -> ONNX initializer map written at export;
- `deltas`: factors + map -> weight deltas in the ONNX layout, checked, cached (LRU);
- `refit`: applies a set of deltas to live weight buffers and restores the base bitwise.
"""
