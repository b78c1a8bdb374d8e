# SD 1.5's UNet in plain PyTorch (the diffusers UNet2DConditionModel layout at its defaults,
# attention as diffusers' AttnProcessor: baddbmm + softmax + bmm, the path diffusers takes on
# torch 1.13), random weights, for a side-by-side timing with `npm run bench -- unet`.
# Dev-only: the package never runs Python. 859.5 M parameters, as SD 1.5's UNet.
# Usage: python3 bench/pytorch/unet_sd15.py [f32|bf16] [threads=2] [runs=3]
# Needs torch, e.g. in a venv: python3 -m venv .venv && .venv/bin/pip install torch
import math, sys, time, torch, torch.nn as nn, torch.nn.functional as F

class Resnet(nn.Module):
    def __init__(s, cin, cout):
        super().__init__()
        s.norm1 = nn.GroupNorm(32, cin, eps=1e-5); s.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        s.temb = nn.Linear(1280, cout)
        s.norm2 = nn.GroupNorm(32, cout, eps=1e-5); s.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        s.short = nn.Conv2d(cin, cout, 1) if cin != cout else None
    def forward(s, x, t):
        h = s.conv1(F.silu(s.norm1(x)))
        h = h + s.temb(F.silu(t))[:, :, None, None]
        h = s.conv2(F.silu(s.norm2(h)))
        return (s.short(x) if s.short is not None else x) + h

class Attn(nn.Module):
    def __init__(s, c, cctx, heads=8):
        super().__init__()
        s.h = heads; s.q = nn.Linear(c, c, bias=False); s.k = nn.Linear(cctx, c, bias=False)
        s.v = nn.Linear(cctx, c, bias=False); s.o = nn.Linear(c, c)
    def forward(s, x, ctx):
        B, N, C = x.shape; d = C // s.h
        sp = lambda t: t.reshape(B, -1, s.h, d).permute(0, 2, 1, 3).reshape(B * s.h, -1, d)
        q, k, v = sp(s.q(x)), sp(s.k(ctx)), sp(s.v(ctx))
        sc = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype), q, k.transpose(1, 2), beta=0, alpha=d ** -0.5)
        o = torch.bmm(sc.softmax(-1), v)
        return s.o(o.reshape(B, s.h, N, d).permute(0, 2, 1, 3).reshape(B, N, C))

class Block(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.n1, s.n2, s.n3 = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        s.a1, s.a2 = Attn(c, c), Attn(c, 768)
        s.ff1 = nn.Linear(c, 8 * c); s.ff2 = nn.Linear(4 * c, c)
    def forward(s, x, ctx):
        h = s.n1(x); x = s.a1(h, h) + x
        x = s.a2(s.n2(x), ctx) + x
        a, g = s.ff1(s.n3(x)).chunk(2, -1)
        return s.ff2(a * F.gelu(g)) + x

class Transformer(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.norm = nn.GroupNorm(32, c, eps=1e-6); s.pi = nn.Conv2d(c, c, 1); s.b = Block(c); s.po = nn.Conv2d(c, c, 1)
    def forward(s, x, ctx):
        B, C, H, W = x.shape
        h = s.pi(s.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = s.b(h, ctx).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return s.po(h) + x

class UNet(nn.Module):
    def __init__(s):
        super().__init__()
        ch = [320, 640, 1280, 1280]
        s.conv_in = nn.Conv2d(4, 320, 3, padding=1)
        s.t1, s.t2 = nn.Linear(320, 1280), nn.Linear(1280, 1280)
        s.down = nn.ModuleList(); cin = 320; skips = [320]
        for i, c in enumerate(ch):
            blk = nn.ModuleDict({'res': nn.ModuleList([Resnet(cin, c), Resnet(c, c)])})
            if i < 3: blk['att'] = nn.ModuleList([Transformer(c), Transformer(c)]); blk['ds'] = nn.Conv2d(c, c, 3, stride=2, padding=1)
            s.down.append(blk); cin = c; skips += [c, c] + ([c] if i < 3 else [])
        s.mid = nn.ModuleList([Resnet(1280, 1280), Transformer(1280), Resnet(1280, 1280)])
        s.up = nn.ModuleList(); prev = 1280
        for i, c in enumerate(reversed(ch)):
            res = nn.ModuleList()
            for j in range(3):
                res.append(Resnet(prev + skips.pop(), c)); prev = c
            blk = nn.ModuleDict({'res': res})
            if i > 0: blk['att'] = nn.ModuleList([Transformer(c) for _ in range(3)])
            if i < 3: blk['us'] = nn.Conv2d(c, c, 3, padding=1)
            s.up.append(blk)
        s.norm_out = nn.GroupNorm(32, 320); s.conv_out = nn.Conv2d(320, 4, 3, padding=1)
    def forward(s, x, t, ctx):
        half = 160
        f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        e = t * f; emb = torch.cat([torch.cos(e), torch.sin(e)])[None].to(x.dtype)
        temb = s.t2(F.silu(s.t1(emb)))
        h = s.conv_in(x); hs = [h]
        for blk in s.down:
            for j, r in enumerate(blk['res']):
                h = r(h, temb)
                if 'att' in blk: h = blk['att'][j](h, ctx)
                hs.append(h)
            if 'ds' in blk: h = blk['ds'](h); hs.append(h)
        h = s.mid[0](h, temb); h = s.mid[1](h, ctx); h = s.mid[2](h, temb)
        for blk in s.up:
            for j, r in enumerate(blk['res']):
                h = r(torch.cat([h, hs.pop()], 1), temb)
                if 'att' in blk: h = blk['att'][j](h, ctx)
            if 'us' in blk: h = blk['us'](F.interpolate(h, scale_factor=2.0, mode='nearest'))
        return s.conv_out(F.silu(s.norm_out(h)))

def bench_main(build, inputs):
    """argv: [f32|bf16] [threads=2] [runs=3]; times build()(*inputs(dtype)) without grad."""
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    dt = {'f32': torch.float32, 'bf16': torch.bfloat16}[sys.argv[1] if len(sys.argv) > 1 else 'f32']
    torch.manual_seed(0)
    m = build().eval().to(dt)
    print('params', sum(p.numel() for p in m.parameters()) / 1e6, 'M', flush=True)
    args = inputs(dt)
    with torch.no_grad():
        for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
            t0 = time.time(); m(*args); print(f'run {i}: {time.time() - t0:.2f} s', flush=True)

if __name__ == '__main__':
    bench_main(UNet, lambda dt: (torch.randn(1, 4, 64, 64, dtype=dt), torch.tensor(500.0), torch.randn(1, 77, 768, dtype=dt)))
