# SD 1.5's VAE encoder in plain PyTorch (diffusers' Encoder at SD 1.5's config: conv_in,
# four DownEncoderBlock2D of 128/256/512/512 channels with two resnets each and a stride-2
# conv after the first three (padded (0, 1, 0, 1)), the mid block's resnet, one-head
# attention over the 64x64 tokens and resnet, GroupNorm + SiLU + conv_out, quant_conv),
# attention as diffusers' AttnProcessor (baddbmm + softmax + bmm), random weights, for a
# side-by-side timing with `npm run bench -- vae`. Dev-only: the package never runs Python.
# Usage: python3 bench/pytorch/vae_encoder_sd15.py [f32|bf16] [threads=2] [runs=3]
import torch, torch.nn as nn, torch.nn.functional as F
from unet_sd15 import bench_main

def gn(c):
    return nn.GroupNorm(32, c, eps=1e-6)

class Resnet(nn.Module):
    def __init__(s, cin, cout):
        super().__init__()
        s.norm1 = gn(cin); s.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        s.norm2 = gn(cout); s.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        s.short = nn.Conv2d(cin, cout, 1) if cin != cout else None
    def forward(s, x):
        h = s.conv1(F.silu(s.norm1(x)))
        h = s.conv2(F.silu(s.norm2(h)))
        return (s.short(x) if s.short is not None else x) + h

class Attn(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.norm = gn(c); s.q = nn.Linear(c, c); s.k = nn.Linear(c, c); s.v = nn.Linear(c, c); s.o = nn.Linear(c, c)
    def forward(s, x):
        B, C, H, W = x.shape
        h = s.norm(x).reshape(B, C, H * W).transpose(1, 2)
        q, k, v = s.q(h), s.k(h), s.v(h)
        e = torch.empty(B, H * W, H * W, dtype=q.dtype)
        p = torch.baddbmm(e, q, k.transpose(1, 2), beta=0, alpha=C ** -0.5).softmax(-1)
        return x + s.o(torch.bmm(p, v)).transpose(1, 2).reshape(B, C, H, W)

class Encoder(nn.Module):
    def __init__(s):
        super().__init__()
        ch = [128, 256, 512, 512]
        s.conv_in = nn.Conv2d(3, 128, 3, padding=1)
        s.down = nn.ModuleList(); prev = 128
        for i, c in enumerate(ch):
            blk = nn.ModuleDict({'res': nn.ModuleList([Resnet(prev, c), Resnet(c, c)])}); prev = c
            if i < 3: blk['ds'] = nn.Conv2d(c, c, 3, stride=2)
            s.down.append(blk)
        s.mid = nn.ModuleList([Resnet(512, 512), Attn(512), Resnet(512, 512)])
        s.norm_out = gn(512); s.conv_out = nn.Conv2d(512, 8, 3, padding=1); s.quant = nn.Conv2d(8, 8, 1)
    def forward(s, x):
        h = s.conv_in(x)
        for blk in s.down:
            for r in blk['res']: h = r(h)
            if 'ds' in blk: h = blk['ds'](F.pad(h, (0, 1, 0, 1)))
        for m in s.mid: h = m(h)
        return s.quant(s.conv_out(F.silu(s.norm_out(h))))

if __name__ == '__main__':
    bench_main(Encoder, lambda dt: (torch.randn(1, 3, 512, 512, dtype=dt),))
