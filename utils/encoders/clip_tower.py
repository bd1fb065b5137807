"""The CLIP image tower rebuilt for inference, from the weights the `clip` package loads.

The `clip` package's VisionTransformer computes in the layout and precision of its training: tokens
sequence-first, attention through nn.MultiheadAttention (the packed qkv made contiguous, the output
permuted back), LayerNorm through float32 and back, QuickGELU as three kernels; under bf16 autocast
every float32 weight is cast again on every call. This tower computes the same function with:

- tokens batch-first (N, L, D): the packed qkv projection is split by views straight into
  scaled_dot_product_attention, whose output already lies in (N, L, heads, head_dim) order on the
  GPU's kernels, so attention costs no copies;
- weights converted once to the compute dtype (bf16 on CUDA; `CLIPEncoder.encode`), no autocast;
- LayerNorm on the bf16 input (its statistics are float32 inside the kernel);
- QuickGELU x·σ(1.702x) = SiLU(1.702x)/1.702 as one SiLU: c_fc's rows carry the 1.702 and c_proj's
  weights its inverse (folded once, when the tower is built);
- the residual added in place when no gradient is being recorded.

In float32 it equals the `clip` package's tower to float rounding (tests/test_clip_tower.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

QUICK_GELU = 1.702  # QuickGELU(x) = x·σ(1.702·x)


def residual(x, y):
    """x + y, in place where no autograd graph needs x."""
    return x.add_(y) if not torch.is_grad_enabled() else x + y


class Block(nn.Module):
    """A pre-LayerNorm transformer block on batch-first tokens."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)     # weight and bias: 1.702 × the clip ones
        self.c_proj = nn.Linear(4 * width, width)   # weight: the clip one ÷ 1.702 (bias as it is)

    def attention(self, x):
        n, length, width = x.shape
        qkv = self.qkv(self.ln_1(x)).view(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # views: (N, heads, L, head_dim), head_dim contiguous
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(1, 2).reshape(n, length, width))

    def forward(self, x):
        x = residual(x, self.attention(x))
        return residual(x, self.c_proj(F.silu(self.c_fc(self.ln_2(x)), inplace=True)))


class VisionTower(nn.Module):
    """The ViT image tower of CLIP: patch embedding, class token, blocks, the projected class token."""

    def __init__(self, resolution, patch, width, layers, heads, output_dim):
        super().__init__()
        self.config = dict(resolution=resolution, patch=patch, width=width, layers=layers, heads=heads,
                           output_dim=output_dim)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        # on a channels-last input the patch grid comes out (N, grid, grid, width) in memory: the
        # flatten and transpose below are then views
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1).add_(self.positional_embedding))
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj

    @classmethod
    def from_clip(cls, visual):
        """The same function as the `clip` package's VisionTransformer `visual`, in float32."""
        blocks = visual.transformer.resblocks
        with torch.device('meta'):  # no initialisation: every tensor comes from `visual`
            tower = cls(visual.input_resolution, visual.conv1.kernel_size[0], visual.transformer.width,
                        visual.transformer.layers, blocks[0].attn.num_heads, visual.output_dim)
        source = {k: v.detach().float() for k, v in visual.state_dict().items()}
        state = {k: v for k, v in source.items() if not k.startswith('transformer.')}
        for i in range(len(blocks)):
            state.update(_block_state(source, i))
        tower.load_state_dict(state, strict=True, assign=True)
        return tower

    def copy_as(self, dtype):
        """This tower with its weights in `dtype`, on its device, made once (no float32 copy in between)."""
        device = self.proj.device
        with torch.device('meta'):
            other = type(self)(**self.config)
        other = other.to(dtype=dtype).to_empty(device=device)
        other.load_state_dict(self.state_dict())  # copy_ converts each float32 tensor on the device
        return other.requires_grad_(False).eval()


# block parameter of this tower ← the clip package's name, and the factor folded into it
_BLOCK_NAMES = {'ln_1.weight': ('ln_1.weight', 1), 'ln_1.bias': ('ln_1.bias', 1),
                'qkv.weight': ('attn.in_proj_weight', 1), 'qkv.bias': ('attn.in_proj_bias', 1),
                'out.weight': ('attn.out_proj.weight', 1), 'out.bias': ('attn.out_proj.bias', 1),
                'ln_2.weight': ('ln_2.weight', 1), 'ln_2.bias': ('ln_2.bias', 1),
                'c_fc.weight': ('mlp.c_fc.weight', QUICK_GELU), 'c_fc.bias': ('mlp.c_fc.bias', QUICK_GELU),
                'c_proj.weight': ('mlp.c_proj.weight', 1 / QUICK_GELU), 'c_proj.bias': ('mlp.c_proj.bias', 1)}


def _block_state(source, i):
    """Block i's parameters from the clip package's state dict `source` (float32)."""
    return {f'blocks.{i}.{ours}': source[f'transformer.resblocks.{i}.{theirs}'] * factor
            for ours, (theirs, factor) in _BLOCK_NAMES.items()}
