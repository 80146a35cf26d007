"""Byte-level GPT trained on the Python standard library's source for a fixed wall-clock budget.

Run:  python train.py
      (AUTORESEARCH_TIME_BUDGET=60 AUTORESEARCH_SEED=0 by default; prepare.py builds the data
      cache on first use; the model goes to AUTORESEARCH_OUTPUT_DIR, by hand to the cache)

This is the file the agent edits. It trains until the time budget is spent, with a learning-rate
schedule that follows elapsed time (prepare.py's clock, which leaves out time a cloud host's
hypervisor gave to other tenants), saves the model with prepare.py's save_model and prints a
summary block (`---`, then `name: value` lines). It measures nothing: the harness evaluates the
saved model in its own process (`python prepare.py --evaluate`).

The model: a small pre-norm transformer with rotary positions, QK-norm and a ReLU-squared MLP,
plus hashed embeddings of the last 2 to NGRAM_ORDER bytes (a byte model learns short contexts
from them far faster than from attention alone: orders up to 5 took val_bpb from 2.19 to 2.08 on
the splits of before the test suite was held out).
Muon updates the block matrices, AdamW the rest.
"""

import math
import os
import random
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import VOCAB_SIZE, TrainBatches, TrainingClock, save_model

# ---------------------------------------------------------------------------------------------
# Hyperparameters

DEPTH = 2
N_EMBD = 128
N_HEAD = 4
MLP_RATIO = 4
SEQ_LEN = 128
BATCH_SIZE = 8
NGRAM_ORDER = 5
NGRAM_BUCKETS = 8192
LEARNING_RATE = 2e-2
NGRAM_LR = 5e-2  # each n-gram row is seen rarely, so it learns faster than the rest
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.99
MUON_LR = 0.01
MUON_MOMENTUM = 0.95
NS_STEPS = 3
WARMUP_FRACTION = 0.02
WARMDOWN_FRACTION = 0.4
FINAL_LR_FRACTION = 0.0
GRAD_CLIP = 0.0  # 0 turns clipping off
ROPE_BASE = 10000
LOG_EVERY_SECONDS = 5
CPU_THREADS = 2

# ---------------------------------------------------------------------------------------------
# Run settings from the harness

script_started = time.perf_counter()
time_budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "60"))
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
random.seed(seed)
torch.manual_seed(seed)

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cpu":
    # On an idle 2-core box two threads halve a step (143 ms -> 75 ms); on a box busy with other
    # work, threads wait on each other and one thread can run several times more steps.
    torch.set_num_threads(CPU_THREADS)
else:
    torch.cuda.manual_seed_all(seed)
    torch.backends.cuda.matmul.allow_tf32 = True

# ---------------------------------------------------------------------------------------------
# Model


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs by a position-dependent angle, so attention sees relative offsets."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = N_EMBD // N_HEAD
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, time_steps, _ = x.shape
        q, k, v = self.qkv(x).view(batch, time_steps, 3, N_HEAD, self.head_dim).permute(2, 0, 3, 1, 4)
        # Normalising queries and keys keeps attention logits bounded at high learning rates.
        q, k = apply_rotary(rms_norm(q), cos, sin), apply_rotary(rms_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, time_steps, N_EMBD))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_EMBD, MLP_RATIO * N_EMBD, bias=False)
        self.proj = nn.Linear(MLP_RATIO * N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = CausalSelfAttention()
        self.mlp = MLP()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, N_EMBD)
        # One table per context length 2..NGRAM_ORDER, indexed by a hash of the last bytes.
        self.ngrams = nn.ModuleList(nn.Embedding(NGRAM_BUCKETS, N_EMBD) for _ in range(2, NGRAM_ORDER + 1))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.lm_head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        self.init_weights()

    def init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=N_EMBD ** -0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)
        # Zero output projections make every block start as the identity, which trains faster.
        for block in self.blocks:
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.zeros_(self.lm_head.weight)

    def rotary_tables(self, time_steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = N_EMBD // N_HEAD
        inverse_frequencies = ROPE_BASE ** (-torch.arange(0, head_dim, 2, device=device) / head_dim)
        angles = torch.outer(torch.arange(time_steps, device=device).float(), inverse_frequencies)
        return angles.cos(), angles.sin()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Next-byte logits, shape (batch, time, VOCAB_SIZE)."""
        cos, sin = self.rotary_tables(inputs.size(1), inputs.device)
        x = self.embed(inputs)
        context_hash = inputs
        for offset, table in enumerate(self.ngrams, start=1):
            previous = F.pad(inputs, (offset, 0))[:, :-offset]
            context_hash = (context_hash * 1000003 + previous + 1) % 1000000007
            x = x + table(context_hash % NGRAM_BUCKETS)
        x = rms_norm(x)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(rms_norm(x))


model = GPT().to(device)
num_params = sum(parameter.numel() for parameter in model.parameters())

# ---------------------------------------------------------------------------------------------
# Optimizers and schedule


def orthogonalize(gradient: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton-Schulz iterations towards the nearest orthogonal matrix (the Muon update)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = gradient / (gradient.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update: every direction of a matrix learns at one speed."""

    def __init__(self, params, lr: float, momentum: float):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(parameter.grad)
                update = orthogonalize(parameter.grad.add(buffer, alpha=group["momentum"]), NS_STEPS)
                scale = max(1.0, parameter.size(0) / parameter.size(1)) ** 0.5
                parameter.add_(update, alpha=-group["lr"] * scale)


# Muon for the matrices inside the blocks; AdamW for the embeddings, the n-gram tables and the head.
block_matrices, ngram_tables, other_parameters = [], [], []
for name, parameter in model.named_parameters():
    if parameter.dim() == 2 and name.startswith("blocks."):
        block_matrices.append(parameter)
    elif name.startswith("ngrams."):
        ngram_tables.append(parameter)
    else:
        other_parameters.append(parameter)
optimizers = [
    Muon(block_matrices, lr=MUON_LR, momentum=MUON_MOMENTUM),
    torch.optim.AdamW([dict(params=other_parameters), dict(params=ngram_tables, lr=NGRAM_LR)], lr=LEARNING_RATE,
                      betas=(ADAM_BETA1, ADAM_BETA2), weight_decay=0.0, fused=True),
]
for optimizer in optimizers:
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]


def lr_multiplier(progress: float) -> float:
    """Linear warmup, a constant plateau, then a linear warmdown, on the fraction of budget used."""
    if progress < WARMUP_FRACTION:
        return (progress + 1e-3) / (WARMUP_FRACTION + 1e-3)
    if progress > 1.0 - WARMDOWN_FRACTION:
        remaining = max(0.0, 1.0 - progress) / WARMDOWN_FRACTION
        return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * remaining
    return 1.0


# ---------------------------------------------------------------------------------------------
# Training loop

batches = TrainBatches(BATCH_SIZE, SEQ_LEN, seed=seed, device=device)
print(f"device {device} | params {num_params / 1e6:.2f}M | budget {time_budget:g}s | seed {seed}", flush=True)

step = 0
training_seconds = 0.0
last_log = 0.0
clock = TrainingClock(time_budget)  # wall time less what the hypervisor stole (prepare.py)
while not clock.expired():
    multiplier = lr_multiplier(training_seconds / time_budget)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
    inputs, targets = batches.next_batch()
    logits = model(inputs)
    loss = F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), targets.reshape(-1))
    loss.backward()
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        print(f"loss is {loss_value} at step {step}", flush=True)
        sys.exit(1)
    if GRAD_CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step += 1
    training_seconds = clock.seconds()
    if training_seconds - last_log >= LOG_EVERY_SECONDS:
        last_log = training_seconds
        bytes_per_second = step * BATCH_SIZE * SEQ_LEN / training_seconds
        print(f"step {step:5d} | {training_seconds:5.1f}s | loss {loss_value:.4f} | "
              f"lr x{multiplier:.2f} | {bytes_per_second / 1e3:.1f}k bytes/s", flush=True)

stolen_seconds = clock.stolen_seconds()

# ---------------------------------------------------------------------------------------------
# Saving the model and the summary

saved = save_model(model, SEQ_LEN)  # the harness evaluates it; the training never sees held-out data

if device.type == "cuda":
    peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
else:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_memory_mb = peak_rss / 2**20 if sys.platform == "darwin" else peak_rss / 2**10

print("---")
print(f"training_seconds: {training_seconds:.1f}")
print(f"stolen_seconds: {stolen_seconds:.1f}")
print(f"export_seconds: {saved.seconds:.1f}")
print(f"model_mb: {saved.size_bytes / 2**20:.1f}")
print(f"total_seconds: {time.perf_counter() - script_started:.1f}")
print(f"peak_memory_mb: {peak_memory_mb:.1f}")
print(f"num_steps: {step}")
print(f"num_params_M: {num_params / 1e6:.3f}")
