"""How fast this machine trains the study's base outside kiwi: a plain Hugging Face Qwen2 step (the
study_cpu_base sizes, 64 x 256 tokens, AdamW, one thread), to compare the VM's speed across days.

    python bench/raw_step.py
"""

import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

torch.set_num_threads(1)
torch.manual_seed(0)
config = Qwen2Config(num_hidden_layers=4, hidden_size=8, intermediate_size=24, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=320, max_position_embeddings=4096)
model = Qwen2ForCausalLM(config)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x = torch.randint(0, 320, (64, 256))
for i in range(13):  # 3 warm-up steps, 10 timed
    if i == 3:
        start = time.perf_counter()
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad()
dt = (time.perf_counter() - start) / 10
print(f"{dt * 1000:.0f} ms/step {64 * 256 / dt / 1000:.1f}k tok/s")
