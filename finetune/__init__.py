"""LoRA and DreamBooth finetuning of diffusers pipelines with peft (`dgate finetune`), writing
`.safetensors` adapters that `pipe.load_lora_weights(path)` loads. See finetune/README.md."""
