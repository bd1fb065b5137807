"""The LRA-diffusion model: a time-gated MLP denoiser and the label-diffusion process.

`Denoiser` predicts the noise ε added to a one-hot label, conditioned on the image through two
paths: the frozen f_p features (concatenated with y_t) and an image embedding x_e from the
diffusion encoder (multiplied in after the first layer).

`Diffusion` holds the β schedule as buffers and implements the forward noising q(y_t | y_0), the
deterministic/stochastic DDIM sampler and the ancestral (DDPM) sampler. Samplers take a function
`eps_fn(y_t, t) -> ε̂` so they serve any denoiser and can be checked on known functions.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

N_TIMESTEPS = 1000


def cosine_betas(n_steps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal's cosine schedule: β_t = 1 − ᾱ(t+1)/ᾱ(t), capped at max_beta."""
    def alpha_bar(i):
        return math.cos((i / n_steps + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(n_steps)],
                        dtype=torch.float64)


def linear_betas(n_steps, start=1e-4, end=0.02):
    return torch.linspace(start, end, n_steps, dtype=torch.float64)


BETA_SCHEDULES = {'cosine': cosine_betas, 'linear': linear_betas}


def ddim_timesteps(n_timesteps, n_steps):
    """Uniformly spaced DDIM steps, highest first: with T=1000 and 10 steps, 901, 801, ..., 1.

    The +1 offset follows the reference implementation, so the last step lands on t=1 and the
    sampler's final output sits at ᾱ_0, one step from clean.
    """
    if not 1 <= n_steps <= n_timesteps:
        raise ValueError(f'ddim steps must be in [1, {n_timesteps}], got {n_steps}')
    stride = n_timesteps // n_steps
    steps = torch.arange(0, n_timesteps, stride)[:n_steps] + 1
    return steps.clamp(max=n_timesteps - 1).flip(0)


class Diffusion(nn.Module):
    """Label diffusion with zero prior mean: y_t = √ᾱ_t·y_0 + √(1−ᾱ_t)·ε."""

    def __init__(self, n_timesteps=N_TIMESTEPS, schedule='cosine'):
        super().__init__()
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f'unknown beta schedule {schedule!r}; choose from {sorted(BETA_SCHEDULES)}')
        betas = BETA_SCHEDULES[schedule](n_timesteps)
        alphas_bar = torch.cumprod(1 - betas, dim=0)
        self.n_timesteps = n_timesteps
        self.schedule = schedule
        self._ddim_plans = {}  # (steps, eta, device) → the sampler's per-step constants (ddim_plan)
        # Computed in float64, stored in float32: the device and dtype follow the module.
        self.register_buffer('betas', betas.float())
        self.register_buffer('alphas_bar', alphas_bar.float())
        self.register_buffer('sqrt_alphas_bar', alphas_bar.sqrt().float())
        self.register_buffer('sqrt_one_minus_alphas_bar', (1 - alphas_bar).sqrt().float())

    def sample_timesteps(self, batch_size, generator=None):
        """Antithetic pairs t and T−1−t, which lowers the variance of the loss estimate."""
        device = self.betas.device
        half = torch.randint(0, self.n_timesteps, (batch_size // 2 + 1,), device=device, generator=generator)
        return torch.cat([half, self.n_timesteps - 1 - half])[:batch_size]

    def q_sample(self, y0, t, noise):
        return self.sqrt_alphas_bar[t, None] * y0 + self.sqrt_one_minus_alphas_bar[t, None] * noise

    @torch.inference_mode()
    def ddim_sample(self, eps_fn, shape, n_steps=10, eta=0.0, noisy_start=False, generator=None):
        """DDIM (Song et al. 2021). eta=0 and noisy_start=False give the deterministic sampler
        that starts from y_T = 0, the paper's inference; eta=1 is DDPM-like stochastic sampling."""
        y = self._start(shape, noisy_start, generator)
        for t, coefficients in self.ddim_plan(n_steps, eta):
            eps = eps_fn(y, t.expand(shape[0]))
            noise = self._noise(shape, generator) if eta > 0 else None
            y = ddim_update(y, eps, coefficients, noise)
        return y

    def ddim_plan(self, n_steps, eta=0.0):
        """Per DDIM step, highest t first: t (a 1-element tensor) and the update's coefficients, computed
        once per (steps, eta, device) rather than at every call: a sampler call then launches only the
        update's own kernels (and reads no host values, so it can be captured in a CUDA graph)."""
        key = (n_steps, eta, self.alphas_bar.device)
        if key not in self._ddim_plans:
            steps = ddim_timesteps(self.n_timesteps, n_steps).tolist()
            plan = []
            for i, t in enumerate(steps):
                # The step after the last one is t=0's ᾱ, as in the reference sampler.
                a_prev = self.alphas_bar[steps[i + 1]] if i + 1 < len(steps) else self.alphas_bar[0]
                t_index = torch.full((1,), t, device=self.alphas_bar.device, dtype=torch.long)
                plan.append((t_index, ddim_coefficients(self.alphas_bar[t], a_prev, eta)))
            self._ddim_plans[key] = plan
        return self._ddim_plans[key]

    @torch.inference_mode()
    def ddpm_sample(self, eps_fn, shape, noisy_start=True, generator=None):
        """Ancestral sampling through all T steps (Ho et al. 2020), returning the t=0 estimate."""
        device = self.betas.device
        y = self._start(shape, noisy_start, generator)
        for t in range(self.n_timesteps - 1, 0, -1):
            a_t, a_prev, beta = self.alphas_bar[t], self.alphas_bar[t - 1], self.betas[t]
            eps = eps_fn(y, torch.full((shape[0],), t, device=device, dtype=torch.long))
            y0_hat = (y - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            mean = (beta * a_prev.sqrt() / (1 - a_t)) * y0_hat + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * y
            var = beta * (1 - a_prev) / (1 - a_t)
            y = mean + var.sqrt() * self._noise(shape, generator)
        eps = eps_fn(y, torch.zeros(shape[0], device=device, dtype=torch.long))
        return (y - (1 - self.alphas_bar[0]).sqrt() * eps) / self.alphas_bar[0].sqrt()

    def _noise(self, shape, generator):
        return torch.randn(shape, device=self.betas.device, generator=generator)

    def _start(self, shape, noisy_start, generator):
        if noisy_start:
            return self._noise(shape, generator)
        return torch.zeros(shape, device=self.betas.device)


def ddim_step(y_t, eps, a_t, a_prev, eta=0.0, noise=None):
    """One DDIM update from ᾱ_t to ᾱ_prev; eta=1 with consecutive steps is the DDPM posterior."""
    return ddim_update(y_t, eps, ddim_coefficients(a_t, a_prev, eta), noise)


def ddim_coefficients(a_t, a_prev, eta=0.0):
    """The scalars of one DDIM update: √(1−ᾱ_t), √ᾱ_t, √ᾱ_prev, the weight of ε in the new y, and σ."""
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    return (1 - a_t).sqrt(), a_t.sqrt(), a_prev.sqrt(), (1 - a_prev - sigma ** 2).clamp(min=0).sqrt(), sigma


def ddim_update(y_t, eps, coefficients, noise=None):
    """y_prev = √ᾱ_prev·ŷ_0 + √(1−ᾱ_prev−σ²)·ε (+ σ·noise), with ŷ_0 = (y_t − √(1−ᾱ_t)·ε)/√ᾱ_t."""
    sqrt_one_minus_a, sqrt_a, sqrt_a_prev, eps_weight, sigma = coefficients
    y0_hat = (y_t - sqrt_one_minus_a * eps) / sqrt_a
    y = sqrt_a_prev * y0_hat + eps_weight * eps
    return y if noise is None else y + sigma * noise


def labels_from_y0(y0):
    """The predicted class is the coordinate closest to 1."""
    return (-(y0 - 1) ** 2).argmax(dim=1)


def ranked_from_y0(y0, k):
    """The k classes whose coordinates are closest to 1, closest first (B × k): the first is
    labels_from_y0's class, so top-k accuracy is never below top-1."""
    closeness = -(y0 - 1) ** 2
    first = closeness.argmax(dim=1, keepdim=True)
    rest = closeness.scatter(1, first, float('-inf')).topk(k - 1, dim=1).indices
    return torch.cat([first, rest], dim=1)


class TimeGatedLinear(nn.Module):
    """A linear layer whose output is scaled element-wise by a learned gain per timestep."""

    def __init__(self, n_in, n_out, n_timesteps):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        # One row per timestep, plus one so the sampler's t = T is addressable too.
        self.gain = nn.Embedding(n_timesteps + 1, n_out)
        nn.init.uniform_(self.gain.weight)

    def forward(self, x, t):
        return self.gain(t) * self.linear(x)


class Denoiser(nn.Module):
    """ε-prediction network: (x, y_t, t, f_p(x)) → ε̂.

    `diff_encoder` maps `x` (an image batch or f_p features, depending on the diffusion
    encoder) to a `feature_dim` embedding. Split into `embed_x` and `head` so samplers compute the
    image embedding once per batch rather than once per step. `fp_conditioning` False is the
    paper's ablation without the f_p conditioning: the first layer reads y_t alone.
    """

    def __init__(self, n_class, fp_dim, feature_dim, diff_encoder, n_timesteps=N_TIMESTEPS, n_layers=3,
                 fp_conditioning=True):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f'the denoiser needs at least 2 time-gated layers (the x_e gate sits after the first), '
                             f'got {n_layers}')
        self.n_class = n_class
        self.n_layers = n_layers
        self.fp_conditioning = fp_conditioning
        self.diff_encoder = diff_encoder
        self.bf16_embed = False  # bf16 autocast for the diffusion encoder on CUDA; the rest stays float32
        self.x_norm = nn.BatchNorm1d(feature_dim)
        # lin1/norm1 … lin{n}/norm{n}: the paper's three layers keep their checkpoint key names
        for i in range(1, n_layers + 1):
            n_in = n_class + (fp_dim if fp_conditioning else 0) if i == 1 else feature_dim
            setattr(self, f'lin{i}', TimeGatedLinear(n_in, feature_dim, n_timesteps))
            setattr(self, f'norm{i}', nn.BatchNorm1d(feature_dim))
        self.out = nn.Linear(feature_dim, n_class)

    def _layer(self, i, h, t):
        return F.softplus(getattr(self, f'norm{i}')(getattr(self, f'lin{i}')(h, t)))

    def embed_x(self, x):
        use_bf16 = self.bf16_embed and x.is_cuda
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            x_e = self.diff_encoder(x)
        return self.x_norm(x_e.float())

    def head(self, x_e, y_t, t, fp_x):
        first = torch.cat([y_t, fp_x], dim=1) if self.fp_conditioning else y_t
        h = x_e * self._layer(1, first, t)  # the image gates the first layer
        for i in range(2, self.n_layers + 1):
            h = self._layer(i, h, t)
        return self.out(h)

    def forward(self, x, y_t, t, fp_x):
        return self.head(self.embed_x(x), y_t, t, fp_x)


@torch.inference_mode()
def sample_y0(denoiser, diffusion, x_e, fp_x, n_steps=10, eta=0.0, noisy_start=False, generator=None):
    """Run the DDIM sampler for one batch whose image embedding is already computed."""
    def eps_fn(y_t, t):
        return denoiser.head(x_e, y_t, t, fp_x).float()

    shape = (fp_x.shape[0], denoiser.n_class)
    return diffusion.ddim_sample(eps_fn, shape, n_steps=n_steps, eta=eta, noisy_start=noisy_start,
                                 generator=generator)

