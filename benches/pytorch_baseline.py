#!/usr/bin/env python3
"""PyTorch baseline of `unroll bench`: the same char-LM training step, timed the same way.

Step: one-hot input over V tokens (F.one_hot on the token ids, as float32; with --embed E an
nn.Embedding(V, E) instead, as word-level models have it), nn.RNN (tanh) /
nn.GRU / nn.LSTM over T steps (time-major [T, B, V]; with --bidirectional, --proj-size P and
--no-bias as `bidirectional=True`, `proj_size=P`, `bias=False`), nn.Linear(D*W, V) on every
step (D directions of W = P or H values), mean cross-entropy, zero_grad, backward,
clip_grad_norm_(5), SGD step, and the final state carried (detached) into the next step. fp32
throughout, TF32 off, `torch.set_num_threads(--threads)`. Batches are random tokens (targets:
the next token of the same stream) built on the device before the clock starts and rotated
among four. A bidirectional step is a labelling step: the targets are random labels and every
batch starts from a zero state (nothing is carried).

Protocol, as unroll's: --warmup untimed steps, then --repeats samples of a block of --block steps,
each block synchronised (torch.cuda.synchronize on CUDA) before the clock is read and divided
by --block. Prints one JSON line: tokens_per_s (B*T / median step time), step_ms (median, min,
max, p10, p90), device, threads, torch version, and the per-step samples.

Run by `unroll bench --baseline pytorch` (which feeds this file to Python on stdin), or alone:
    python3 benches/pytorch_baseline.py --hidden 128 --batch 32 --seq-len 64 --threads 2
"""

import argparse
import json
import math
import time


def spread(ms):
    v = sorted(ms)
    n = len(v)
    median = v[n // 2] if n % 2 == 1 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    def rank(p):
        return v[min(max(math.ceil(p * n), 1), n) - 1]

    return {"median": median, "min": v[0], "max": v[-1], "p10": rank(0.1), "p90": rank(0.9),
            "samples": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="rnn", choices=["rnn", "gru", "lstm"])
    ap.add_argument("--vocab-size", type=int, default=65)
    ap.add_argument("--embed", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--proj-size", type=int, default=0)
    ap.add_argument("--no-bias", action="store_true")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)

    V, H, B, T, L = a.vocab_size, a.hidden, a.batch, a.seq_len, a.layers
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[a.cell]
    E = a.embed
    emb = torch.nn.Embedding(V, E).to(dev) if E else None
    D, W = (2 if a.bidirectional else 1), (a.proj_size or H)
    extra = {"proj_size": a.proj_size} if a.proj_size else {}
    rnn = cls(E or V, H, num_layers=L, bidirectional=a.bidirectional, bias=not a.no_bias,
              **extra).to(dev)
    out = torch.nn.Linear(D * W, V).to(dev)
    params = list(rnn.parameters()) + list(out.parameters())
    if emb is not None:
        params += list(emb.parameters())
    opt = torch.optim.SGD(params, lr=a.lr)

    gen = torch.Generator().manual_seed(a.seed + 1)
    batches = []
    for _ in range(4):
        s = torch.randint(0, V, (T + 1, B), generator=gen)
        y = torch.randint(0, V, (T, B), generator=gen) if a.bidirectional else s[1:]
        batches.append((s[:-1].contiguous().to(dev), y.contiguous().to(dev)))

    h0 = torch.zeros(L * D, B, W, device=dev)
    c0 = torch.zeros(L * D, B, H, device=dev)
    zero_state = (h0, c0) if a.cell == "lstm" else h0
    state = zero_state
    counter = [0]

    def step():
        nonlocal state
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        xo = emb(x) if emb is not None else F.one_hot(x, V).to(torch.float32)
        hs, last = rnn(xo, state)
        logits = out(hs)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        if a.bidirectional:
            state = zero_state
        else:
            state = tuple(t.detach() for t in last) if isinstance(last, tuple) else last.detach()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    ms = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.block):
            step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3 / a.block)
    st = spread(ms)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(json.dumps({
        "tokens_per_s": B * T / (st["median"] * 1e-3),
        "step_ms": st,
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "samples_ms": ms,
    }))


if __name__ == "__main__":
    main()
