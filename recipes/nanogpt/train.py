"""nanogpt: a small modern GPT trained on FineWeb-Edu for a fixed wall-clock budget. Metric: val_bpb (lower is better),
measured by the harness on the model this file saves.

    python train.py      # after `python prepare.py`; autoresearch runs it in the recipe folder

This is the file the agent edits; prepare.py (data, tokenizer, model saving, evaluation) is fixed. The model: rotary
embeddings, RMSNorm, QK-norm, ReLU^2 MLP, untied head, logit soft-capping, per-layer residual and input scalars,
attention by scaled_dot_product_attention (flash kernels where the GPU has them). bf16 autocast on GPUs with bf16,
torch.compile on CUDA. Muon for the block matrices, AdamW for embeddings, head and scalars. The learning rate follows
elapsed training time over the budget; the budget counts training steps only, after the compile warm-up. At the end
the model is saved with prepare.save_model; the harness evaluates it in its own process (val_bpb), not this file.

Environment:
    AUTORESEARCH_TIME_BUDGET            seconds of training (default 300)
    AUTORESEARCH_SEED                   seeds Python's random, numpy if present, torch on CPU and GPU (default 0)
    AUTORESEARCH_OUTPUT_DIR             where the model is saved (set by the harness; by hand: the cache)
    AUTORESEARCH_CACHE                  where prepare.py put data and tokenizer (default ~/.cache/autoresearch)
    AUTORESEARCH_NANOGPT_TINY           1: a toy model for a CPU smoke test (prepare.py shrinks its evaluation too)
    AUTORESEARCH_NANOGPT_DEPTH          overrides DEPTH (the width follows: DEPTH * ASPECT_RATIO)
    AUTORESEARCH_NANOGPT_DEVICE_BATCH   overrides DEVICE_BATCH_SIZE (lower it on a 16-24 GB GPU; same optimization)
    AUTORESEARCH_NANOGPT_DEVICE         cuda | mps | cpu (default: the first one present)
    AUTORESEARCH_NANOGPT_COMPILE        0 | 1 (default: 1 on CUDA GPUs from Volta on, 0 elsewhere)
    AUTORESEARCH_NANOGPT_PEAK_TFLOPS    peak dense bf16 TFLOP/s of a GPU missing from GPU_PEAK_TFLOPS, for MFU
"""

import time

T_START = time.time()

import gc
import math
import os
import random
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, load_tokenizer, make_dataloader, save_model

# ---------------------------------------------------------------------------------------------------------------
# Hyperparameters

# model
DEPTH = 8  # transformer blocks
ASPECT_RATIO = 64  # width = DEPTH * ASPECT_RATIO: 512 at depth 8 (~50M parameters)
HEAD_DIM = 128
MLP_RATIO = 4
ROPE_BASE = 10_000.0
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap): no runaway logits early on

# batch
SEQ_LEN = MAX_SEQ_LEN  # training context, and the model's context in the evaluation (at most prepare.MAX_SEQ_LEN)
TOTAL_BATCH_SIZE = 524_288  # tokens per optimizer step (2**19)
DEVICE_BATCH_SIZE = 64  # rows per micro-step (~40 GB at the default size); accumulation makes up the rest

# optimizers: Muon for the block matrices, AdamW for embeddings, head and scalars
MATRIX_LR = 0.02
EMBEDDING_LR = 0.3  # the AdamW rates are for width 768 and scale as 1/sqrt(width)
UNEMBEDDING_LR = 0.004
SCALAR_LR = 0.005
ADAM_BETAS = (0.8, 0.95)
ADAM_EPS = 1e-10
MUON_MOMENTUM = 0.95
MUON_MOMENTUM_START = 0.85  # ramped up over the first MUON_MOMENTUM_WARMUP steps: early gradients change fast
MUON_MOMENTUM_WARMUP = 300
MUON_NS_STEPS = 5
WEIGHT_DECAY = 0.0  # decoupled, Muon matrices only; scaled by the scheduled learning rate

# schedule, on progress = elapsed training time / budget
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0

# run
COMPILE_WARMUP_STEPS = 2  # untimed steps that trigger compilation; weights and optimizer state are reset after
LOG_EVERY = 25
LOSS_LIMIT_FACTOR = 1.5  # fail once the loss passes 1.5x ln(vocab), the loss of a uniform guess

# Peak dense bf16 tensor-core TFLOP/s (fp32 accumulation) from the vendors' spec sheets; first match wins.
GPU_PEAK_TFLOPS = [
    (r"H100.*NVL", 835.0),
    (r"H100.*PCIe", 756.0),
    (r"H100|GH200", 989.4),
    (r"H200.*NVL", 835.0),
    (r"H200", 989.4),
    (r"H800.*PCIe", 756.0),
    (r"H800", 989.4),
    (r"B200", 2250.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.05),
    (r"L40\b", 181.05),
    (r"L4\b", 121.0),
    (r"A10\b", 125.0),
    (r"A30\b", 165.0),
    (r"A40\b", 149.7),
    (r"RTX A6000", 154.8),
    (r"RTX 4090(?! D)", 165.2),
    (r"RTX 3090 Ti", 80.0),
    (r"RTX 3090", 71.0),
]

TINY = os.environ.get("AUTORESEARCH_NANOGPT_TINY") == "1"
if TINY:  # same code, toy sizes: a smoke test on CPU
    DEPTH, ASPECT_RATIO, HEAD_DIM = 2, 32, 32
    DEVICE_BATCH_SIZE = 4
    TOTAL_BATCH_SIZE = 2 * DEVICE_BATCH_SIZE * SEQ_LEN  # two micro-steps, so accumulation runs too
    LOG_EVERY = 1
DEPTH = int(os.environ.get("AUTORESEARCH_NANOGPT_DEPTH") or DEPTH)
DEVICE_BATCH_SIZE = int(os.environ.get("AUTORESEARCH_NANOGPT_DEVICE_BATCH") or DEVICE_BATCH_SIZE)
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or 300)
SEED = int(os.environ.get("AUTORESEARCH_SEED") or 0)


# ---------------------------------------------------------------------------------------------------------------
# Model

@dataclass
class GPTConfig:
    vocab_size: int
    depth: int
    dim: int
    head_dim: int
    mlp_ratio: int
    max_seq_len: int
    rope_base: float
    softcap: float

    @property
    def n_head(self) -> int:
        return self.dim // self.head_dim


def rms_norm(x):  # no gain: the next matrix can learn one
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.size(-1),))
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)  # torch < 2.4


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)  # (1, T, 1, D/2)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, x):  # (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim
        self.q = nn.Linear(config.dim, inner, bias=False)
        self.k = nn.Linear(config.dim, inner, bias=False)
        self.v = nn.Linear(config.dim, inner, bias=False)
        self.proj = nn.Linear(inner, config.dim, bias=False)

    def forward(self, x, rotary: Rotary):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_head, self.head_dim)
        q, k = rotary(rms_norm(q)), rotary(rms_norm(k))  # QK-norm bounds the attention logits
        q, k = q.to(v.dtype), k.to(v.dtype)  # autocast may keep the norm in fp32; SDPA wants one dtype
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.dim, config.mlp_ratio * config.dim, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.dim, config.dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU^2: as good as SwiGLU here, one matrix fewer


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary: Rotary):
        x = x + self.attn(rms_norm(x), rotary)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)  # untied from wte
        # per layer: x <- resid * x + x0 * (normed embedding), so every layer can reach the input directly
        self.resid_lambdas = nn.Parameter(torch.ones(config.depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.depth))
        self.rotary = Rotary(config.head_dim, config.max_seq_len, config.rope_base)
        self.residual_dtype = torch.float32  # bf16 on GPUs that have it: half the memory traffic of the stream

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)  # normed right after lookup, so the scale is free
        nn.init.normal_(self.lm_head.weight, std=0.001)  # start near the uniform guess
        bound = 3**0.5 * self.config.dim**-0.5  # uniform with std 1/sqrt(fan_in)
        for block in self.blocks:
            for linear in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.0)

    def forward(self, idx, targets=None, reduction="mean"):
        x = rms_norm(self.wte(idx).to(self.residual_dtype))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, self.rotary)
        logits = self.lm_head(rms_norm(x)).float()
        logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per weight of every matrix multiply (blocks and head; the embedding is a
        lookup), plus causal attention: 6 * layers * heads * head_dim * T (each query sees T/2 keys on average)."""
        c = self.config
        matmul = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2) + self.lm_head.weight.numel()
        return 6 * matmul + 6 * c.depth * c.n_head * c.head_dim * seq_len


# ---------------------------------------------------------------------------------------------------------------
# Optimizers

def newton_schulz(G, steps: int):
    """Approximately orthogonalize a stack of matrices (..., rows, cols): the quintic Newton-Schulz iteration
    whose coefficients push every singular value towards ~1 in a few steps (exactness is not needed)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


orthogonalize = newton_schulz  # replaced by a compiled version on CUDA


class Muon(torch.optim.Optimizer):
    """Momentum, then the update orthogonalized: every direction of the matrix moves by the same amount.
    Parameters of one shape form one group and are updated as one stacked batch."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0, ns_steps: int = 5):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == s]) for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grads)
            buf = state["momentum_buffer"]
            buf.lerp_(grads, 1 - momentum)
            update = grads.lerp_(buf, momentum)  # Nesterov: look one momentum step ahead
            update = orthogonalize(update, group["ns_steps"]).to(params[0].dtype)
            rows, cols = params[0].shape
            update *= max(1.0, rows / cols) ** 0.5  # tall matrices: same RMS step per output as square ones
            if decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr)


def build_optimizers(model: GPT, fused: bool):
    width_scale = (model.config.dim / 768) ** -0.5
    adam = torch.optim.AdamW([
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * width_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR),
    ], betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0, fused=fused or None)
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY, ns_steps=MUON_NS_STEPS)
    optimizers = [adam, muon]
    covered = sum(p.numel() for opt in optimizers for g in opt.param_groups for p in g["params"])
    assert covered == sum(p.numel() for p in model.parameters()), "every parameter needs exactly one optimizer"
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress <= 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def muon_momentum(step: int) -> float:
    frac = min(step / MUON_MOMENTUM_WARMUP, 1.0)
    return (1 - frac) * MUON_MOMENTUM_START + frac * MUON_MOMENTUM


# ---------------------------------------------------------------------------------------------------------------
# Hardware

def pick_device() -> torch.device:
    name = os.environ.get("AUTORESEARCH_NANOGPT_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def gpu_peak_tflops(name: str):
    """Peak dense bf16 TFLOP/s of the GPU called name, or None when unknown (then no MFU rather than a wrong one)."""
    override = os.environ.get("AUTORESEARCH_NANOGPT_PEAK_TFLOPS")
    if override:
        return float(override)
    for pattern, tflops in GPU_PEAK_TFLOPS:
        if re.search(pattern, name):
            return tflops
    return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        import resource
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the whole process: KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------------------------
# Training

def main():
    global orthogonalize
    random.seed(SEED)
    torch.manual_seed(SEED)  # CPU and every GPU
    try:
        import numpy
        numpy.random.seed(SEED)
    except ImportError:
        pass
    device = pick_device()
    is_cuda = device.type == "cuda"
    bf16 = is_cuda and torch.cuda.get_device_capability(device)[0] >= 8  # older GPUs: fp32, slow but correct
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    compiles = is_cuda and torch.cuda.get_device_capability(device)[0] >= 7  # Triton needs Volta or newer
    use_compile = os.environ.get("AUTORESEARCH_NANOGPT_COMPILE", "1" if compiles else "0") == "1"
    if is_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for whatever fp32 matmuls remain

    tokenizer = load_tokenizer()
    dim = DEPTH * ASPECT_RATIO
    assert dim % HEAD_DIM == 0, f"width {dim} is not a multiple of HEAD_DIM {HEAD_DIM}"
    config = GPTConfig(vocab_size=tokenizer.vocab_size, depth=DEPTH, dim=dim, head_dim=HEAD_DIM, mlp_ratio=MLP_RATIO,
                       max_seq_len=max(SEQ_LEN, MAX_SEQ_LEN), rope_base=ROPE_BASE, softcap=LOGIT_SOFTCAP)
    model = GPT(config).to(device)
    model.init_weights()
    model.residual_dtype = torch.bfloat16 if bf16 else torch.float32
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token(SEQ_LEN)
    optimizers = build_optimizers(model, fused=is_cuda)
    grad_accum = max(1, round(TOTAL_BATCH_SIZE / (DEVICE_BATCH_SIZE * SEQ_LEN)))
    tokens_per_step = grad_accum * DEVICE_BATCH_SIZE * SEQ_LEN
    loss_limit = LOSS_LIMIT_FACTOR * math.log(config.vocab_size)

    gpu = torch.cuda.get_device_name(device) if is_cuda else device.type
    peak = gpu_peak_tflops(gpu) if bf16 else None  # MFU is against the bf16 peak: only for bf16 runs on a GPU
    print(f"device: {gpu} | precision: {'bf16 autocast' if bf16 else 'fp32'} | compile: {use_compile}")
    if is_cuda and peak is None:
        print("mfu: not reported: " + (f"no peak bf16 TFLOP/s known for {gpu!r} (set AUTORESEARCH_NANOGPT_PEAK_TFLOPS)"
                                       if bf16 else "this GPU runs in fp32"))
    print(f"model: depth {DEPTH}, width {dim}, {config.n_head} heads of {HEAD_DIM}, vocab {config.vocab_size}, "
          f"{num_params / 1e6:.2f}M parameters, {flops_per_token / 1e6:.0f} MFLOP/token")
    print(f"batch: {DEVICE_BATCH_SIZE} x {SEQ_LEN} tokens x {grad_accum} micro-steps = {tokens_per_step:,} tokens/step")
    print(f"budget: {TIME_BUDGET:g}s of training | seed {SEED}", flush=True)

    loader = make_dataloader("train", DEVICE_BATCH_SIZE, SEQ_LEN, device)
    step_model = torch.compile(model, dynamic=False) if use_compile else model
    if use_compile:
        orthogonalize = torch.compile(newton_schulz, dynamic=False)

    def train_step():
        loss_sum = torch.zeros((), device=device)
        for _ in range(grad_accum):
            x, y = next(loader)
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss_sum / grad_accum

    # --- warm-up: compile (and fill caches) on a few untimed steps, then put weights and optimizers back
    start = time.time()
    snapshot = [p.detach().clone() for p in model.parameters()]
    try:
        for _ in range(COMPILE_WARMUP_STEPS):
            train_step()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if not use_compile:
            raise
        print(f"torch.compile failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); running eager")
        step_model, orthogonalize = model, newton_schulz
        model.zero_grad(set_to_none=True)
        for _ in range(COMPILE_WARMUP_STEPS):
            train_step()
    with torch.no_grad():
        for p, saved in zip(model.parameters(), snapshot):
            p.copy_(saved)
    del snapshot
    for opt in optimizers:
        opt.state.clear()
    if is_cuda:
        torch.cuda.synchronize(device)
    print(f"warm-up: {time.time() - start:.1f}s (not counted in the budget)", flush=True)
    gc.collect()
    gc.freeze()  # nothing below makes reference cycles; the collector's pauses would only add jitter
    gc.disable()

    # --- the timed loop
    step, training_time = 0, 0.0
    while training_time < TIME_BUDGET:
        t0 = time.perf_counter()
        lr_scale = lr_multiplier(training_time / TIME_BUDGET)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_scale
        for group in optimizers[1].param_groups:
            group["momentum"] = muon_momentum(step)
        loss = train_step().item()  # waits for the GPU, so the step time below is real
        dt = time.perf_counter() - t0
        training_time += dt
        step += 1
        if not math.isfinite(loss):
            fail(f"training loss is {loss} at step {step}; the run diverged (lower the learning rates?)")
        if loss > loss_limit:
            fail(f"training loss exploded to {loss:.3f} at step {step} (limit {loss_limit:.2f} = "
                 f"{LOSS_LIMIT_FACTOR} x ln(vocab)); the run diverged (lower the learning rates?)")
        if step % LOG_EVERY == 0 or step <= 3 or training_time >= TIME_BUDGET:
            rate = tokens_per_step / dt
            mfu = f" | mfu {100 * rate * flops_per_token / (peak * 1e12):.1f}%" if peak else ""
            print(f"step {step:5d} | loss {loss:.4f} | lr x{lr_scale:.2f} | {dt * 1000:.0f} ms | "
                  f"{rate:,.0f} tok/s{mfu} | epoch {loader.epoch} | {max(0.0, TIME_BUDGET - training_time):.0f}s left",
                  flush=True)
    loader.close()
    gc.enable()

    # --- save the model (the uncompiled module, in the dtype the evaluation uses: prepare.py) and the summary
    total_tokens = step * tokens_per_step
    tokens_per_second = total_tokens / training_time
    saved = save_model(model, SEQ_LEN)
    print("---")
    print(f"training_seconds: {training_time:.1f}")
    print(f"export_seconds: {saved.seconds:.1f}")
    print(f"model_mb: {saved.size_bytes / 2**20:.1f}")
    print(f"total_seconds: {time.time() - T_START:.1f}")
    print(f"peak_memory_mb: {peak_memory_mb(device):.1f}")
    if peak:
        print(f"mfu_percent: {100 * tokens_per_second * flops_per_token / (peak * 1e12):.2f}")
    print(f"tokens_per_second: {tokens_per_second:.0f}")
    print(f"total_tokens_M: {total_tokens / 1e6:.1f}")
    print(f"num_steps: {step}")
    print(f"num_params_M: {num_params / 1e6:.2f}")
    print(f"depth: {DEPTH}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except torch.cuda.OutOfMemoryError:
        fail(f"out of GPU memory with DEVICE_BATCH_SIZE={DEVICE_BATCH_SIZE}: lower it (or set "
             "AUTORESEARCH_NANOGPT_DEVICE_BATCH); the optimization stays the same")
