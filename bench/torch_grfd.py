"""GRFD's phase-I networks and loss in PyTorch, holding weights copied from flax: the
baseline for `bench/grfd_step.py --torch`. torch is a benchmark-only dependency.

Mirrors what `jaxdefense.defenses.grfd.core.make_generator_step` builds for the 'conv'
LVCVAE (the MNIST preset: base 32, z 256) and the LeNet-5 RSM, in training mode: the same
layers in the same order, normalization inside the models, BatchNorm on batch statistics,
the loss alpha*L_rc + beta*L_kl + epsilon*L_rf + gamma*L_cl + delta*L_rb with L_rb's input
gradients kept in the graph (`create_graph=True`) for the second-order backward, then AdamW.
The random draws are arguments (`generator_loss`), so a check can feed in JAX's.

Layout details that matter for equal results:
  * kernels: flax Conv HWIO -> torch OIHW; Dense (in, out) -> Linear (out, in).
  * flatten order: flax flattens NHWC, so the Dense layers reading a feature map (mu,
    logvar, LeNet's Dense_0) get their input rows permuted to NCHW order, and the decoder's
    `project` Dense, whose output is reshaped to a map, gets its output columns permuted.
  * transposed convolutions: flax's ConvTranspose (transpose_kernel=False, 'SAME', k4 s2)
    correlates the stride-dilated input, padded 2 on each side, with the kernel as stored;
    torch's ConvTranspose2d is the adjoint of a convolution, i.e. it correlates with the
    spatially flipped kernel and pads k - 1 - padding. So padding=1, output_padding=0, and
    the kernel flipped in H and W (torch's weight is (in, out, kh, kw)).
  * BatchNorm: flax momentum 0.9 is torch momentum 0.1, epsilon 1e-5 in both; in training
    both normalize by the biased batch variance (torch keeps the unbiased one in its running
    statistics, which the step's loss does not read).
  * the RSM (LeNet-5) has neither dropout nor BatchNorm, so its K noisy input gradients are
    computed as one batch of K*B (JAX vmaps them): per sample the same.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from jaxdefense.data import dataset_info


def _bn(channels: int) -> tnn.BatchNorm2d:
    return tnn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class TorchConvLVCVAE(tnn.Module):
    """LVCVAE kind 'conv' on NCHW images in pixel units (flax: models/vae.py)."""

    def __init__(self, base: int, z_dim: int, num_classes: int, shape, mean, std):
        super().__init__()
        h, w, c = shape
        self.map_shape = (2 * base, h // 4, w // 4)            # the encoder's output, CHW
        flat = 2 * base * (h // 4) * (w // 4)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.enc1, self.enc_bn1 = tnn.Conv2d(c, base, 4, 2, 1, bias=False), _bn(base)
        self.enc2, self.enc_bn2 = tnn.Conv2d(base, 2 * base, 4, 2, 1, bias=False), _bn(2 * base)
        self.mu, self.logvar = tnn.Linear(flat, z_dim), tnn.Linear(flat, z_dim)
        self.project = tnn.Linear(z_dim, flat)
        self.dec1, self.dec_bn1 = tnn.ConvTranspose2d(2 * base, base, 4, 2, 1), _bn(base)
        self.dec2 = tnn.ConvTranspose2d(base, c, 4, 2, 1)
        self.out_bn = _bn(c)
        self.rectifier = tnn.Linear(z_dim, num_classes)

    def forward(self, x, noise):
        """noise: the standard normal draw [B, z] of z = mu + exp(logvar / 2) * noise."""
        h = (x - self.mean) / self.std
        h = F.leaky_relu(self.enc_bn1(self.enc1(h)), 0.2)
        h = F.leaky_relu(self.enc_bn2(self.enc2(h)), 0.2).flatten(1)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * noise
        h = self.project(z).view(-1, *self.map_shape)
        h = F.leaky_relu(self.dec_bn1(self.dec1(h)), 0.2)
        recon = self.out_bn(torch.tanh(self.dec2(h)))          # normalized units
        return dict(mu=mu, logvar=logvar, z=z, recon=recon, x_u=recon * self.std + self.mean,
                    logits_z=self.rectifier(z))


class TorchLeNet5(tnn.Module):
    """LeNet-5 (flax: models/lenet.py) on NCHW inputs, normalized inside with (mean, std)."""

    def __init__(self, widths, num_classes: int, shape, mean, std):
        super().__init__()
        h, w, c = shape
        c1, c2, f1, f2 = widths
        self.map_shape = (c2, (h // 2 - 4) // 2, (w // 2 - 4) // 2)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.c1, self.c2 = tnn.Conv2d(c, c1, 5, padding=2), tnn.Conv2d(c1, c2, 5)
        self.f1 = tnn.Linear(int(np.prod(self.map_shape)), f1)
        self.f2, self.head = tnn.Linear(f1, f2), tnn.Linear(f2, num_classes)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2).flatten(1)
        return self.head(F.relu(self.f2(F.relu(self.f1(x)))))


def gaussian_kl(mu, logvar, reduction: str = "mean"):
    terms = 1.0 + logvar - mu ** 2 - torch.exp(logvar)
    return -0.5 * (terms.sum(dim=1) if reduction == "sum" else terms.mean(dim=1))


def cosine_per_sample(a, b, eps: float = 1e-12):
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def input_gradient(rsm, x, y):
    """d/dx of sum_i CE(rsm(x)_i, y_i), kept in the graph for the second-order backward."""
    loss = F.cross_entropy(rsm(x), y, reduction="sum")
    return torch.autograd.grad(loss, x, create_graph=True)[0]


def robustness_loss(rsm, x_clean, x_r, y, noise):
    """L_rb per sample: -mean_k cos(grad at x_clean, grad at x_r + noise[k]); noise
    [K, B, C, H, W] in pixel units."""
    k = noise.shape[0]
    g_clean = input_gradient(rsm, x_clean, y)
    g_pert = input_gradient(rsm, (x_r.unsqueeze(0) + noise).flatten(0, 1), y.repeat(k))
    cos = cosine_per_sample(g_clean.repeat(k, 1, 1, 1), g_pert).view(k, -1)
    return -cos.mean(0)


def generator_loss(cfg, vae, rsm, x, y, alpha: float, sample_noise, rb_noise):
    """(mean loss, per-sample terms {l_rc, l_kl, l_rf, l_cl, l_rb}) of GRFD phase I.

    x: NCHW pixel units; sample_noise: [B, z] standard normal (the VAE's draw); rb_noise:
    [K, B, C, H, W] the L_rb perturbations in pixel units (unused when delta is 0).
    """
    out = vae(x, sample_noise)
    x_u = out["x_u"]
    x_r = x - x_u
    logits = rsm(x_r)
    x_norm = (x - vae.mean) / vae.std
    terms = dict(l_rc=((out["recon"] - x_norm) ** 2).mean((1, 2, 3)),
                 l_kl=gaussian_kl(out["mu"], out["logvar"], cfg.kl_reduction),
                 l_rf=F.cross_entropy(out["logits_z"], y, reduction="none"),
                 l_cl=F.cross_entropy(logits, y, reduction="none"))
    if cfg.delta > 0:
        x_clean = x_r if cfg.rb_clean_at == "x_r" else x_u
        terms["l_rb"] = robustness_loss(rsm, x_clean, x_r, y, rb_noise)
    else:
        terms["l_rb"] = torch.zeros_like(terms["l_cl"])
    per_sample = (alpha * terms["l_rc"] + cfg.beta * terms["l_kl"] + cfg.epsilon * terms["l_rf"]
                  + cfg.gamma * terms["l_cl"] + cfg.delta * terms["l_rb"])
    return per_sample.mean(), terms


def make_step(cfg, vae, rsm):
    """`step(x, y, alpha) -> loss`: fresh random draws, loss, backward, one AdamW update
    (betas 0.9 / 0.999, eps 1e-8, decoupled weight decay, as optax.adamw; the learning rate
    is cfg.lr, the cosine schedule's value in the first epoch)."""
    opt = torch.optim.AdamW([*vae.parameters(), *rsm.parameters()], lr=cfg.lr,
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    noise_std = cfg.rb_noise * vae.std

    def step(x, y, alpha):
        sample = torch.randn(len(x), vae.mu.out_features)
        rb = torch.randn(cfg.rb_samples, *x.shape) * noise_std if cfg.delta > 0 else None
        loss, _ = generator_loss(cfg, vae, rsm, x, y, alpha, sample, rb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


# flax array -> torch layout, per kind of layer (see the module docstring)
def _conv(k):
    return k.transpose(3, 2, 0, 1)


def _conv_transpose(k):
    return k[::-1, ::-1].transpose(2, 3, 0, 1)


def _dense(k):
    return k.T


def _dense_from_map(c, h, w):
    return lambda k: k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1).T


def _dense_to_map(c, h, w):
    return lambda k: k.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(k.shape[0], -1).T


def _bias_to_map(c, h, w):
    return lambda b: b.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _same(a):
    return a


def parameter_map(vae: TorchConvLVCVAE, rsm: TorchLeNet5):
    """[(flax path, torch parameter, flax -> torch layout)] for every parameter of
    {'vae', 'rsm'}: used to copy weights and to compare gradients."""
    pairs = [(("vae", "encoder", "Conv_0", "kernel"), vae.enc1.weight, _conv),
             (("vae", "encoder", "Conv_1", "kernel"), vae.enc2.weight, _conv)]
    for path, lin, kernel in ((("vae", "mu"), vae.mu, _dense_from_map(*vae.map_shape)),
                              (("vae", "logvar"), vae.logvar, _dense_from_map(*vae.map_shape)),
                              (("vae", "rectifier"), vae.rectifier, _dense),
                              (("rsm", "Dense_0"), rsm.f1, _dense_from_map(*rsm.map_shape)),
                              (("rsm", "Dense_1"), rsm.f2, _dense),
                              (("rsm", "head"), rsm.head, _dense)):
        pairs += [(path + ("kernel",), lin.weight, kernel), (path + ("bias",), lin.bias, _same)]
    pairs += [(("vae", "project", "kernel"), vae.project.weight, _dense_to_map(*vae.map_shape)),
              (("vae", "project", "bias"), vae.project.bias, _bias_to_map(*vae.map_shape))]
    for path, conv, kernel in ((("vae", "decoder", "ConvTranspose_0"), vae.dec1, _conv_transpose),
                               (("vae", "decoder", "ConvTranspose_1"), vae.dec2, _conv_transpose),
                               (("rsm", "Conv_0"), rsm.c1, _conv),
                               (("rsm", "Conv_1"), rsm.c2, _conv)):
        pairs += [(path + ("kernel",), conv.weight, kernel), (path + ("bias",), conv.bias, _same)]
    for path, bn in batchnorm_map(vae):
        pairs += [(path + ("scale",), bn.weight, _same), (path + ("bias",), bn.bias, _same)]
    return pairs


def batchnorm_map(vae: TorchConvLVCVAE):
    """[(flax path without the collection's leaf, torch BatchNorm2d)] of the VAE."""
    return [(("vae", "encoder", "BatchNorm_0"), vae.enc_bn1),
            (("vae", "encoder", "BatchNorm_1"), vae.enc_bn2),
            (("vae", "decoder", "BatchNorm_0"), vae.dec_bn1),
            (("vae", "BatchNorm_0"), vae.out_bn)]


def _at(tree, path):
    for name in path:
        tree = tree[name]
    return np.asarray(tree)


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))        # a writable copy


def from_flax(cfg, params, batch_stats):
    """(vae, rsm) in training mode holding phase I's flax {'vae', 'rsm'} variables."""
    if cfg.vae_kind != "conv" or cfg.classifier != "lenet5" or cfg.dtype != "float32":
        raise ValueError("the PyTorch port covers the conv LVCVAE, the LeNet-5 RSM, float32")
    if not cfg.has_rectifier():
        raise ValueError("the PyTorch port has the rectification head")
    info = dataset_info(cfg.dataset)
    widths = [_at(params, ("rsm", name, "kernel")).shape[-1]
              for name in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")]
    vae = TorchConvLVCVAE(cfg.vae_base, cfg.z_dim, info["num_classes"], info["shape"],
                          info["mean"], info["std"])
    rsm = TorchLeNet5(widths, info["num_classes"], info["shape"],
                      (0.0,) * len(info["mean"]), info["std"])   # residual input: no mean
    with torch.no_grad():
        for path, param, layout in parameter_map(vae, rsm):
            param.copy_(_tensor(layout(_at(params, path))))
        for path, bn in batchnorm_map(vae):
            bn.running_mean.copy_(_tensor(_at(batch_stats, path + ("mean",))))
            bn.running_var.copy_(_tensor(_at(batch_stats, path + ("var",))))
    return vae.train(), rsm.train()


def gradients(vae, rsm) -> dict:
    """{flax path 'vae/.../kernel': torch .grad, float64} after a backward; a parameter torch
    left without a gradient counts as zero."""
    return {"/".join(path): (param.grad if param.grad is not None
                             else torch.zeros_like(param)).double()
            for path, param, _ in parameter_map(vae, rsm)}


def flax_gradients(grads, vae, rsm) -> dict:
    """The flax gradient tree `grads` ({'vae': ..., 'rsm': ...}, or one of them) in torch's
    layout, keyed as `gradients`."""
    return {"/".join(path): _tensor(layout(_at(grads, path))).double()
            for path, _, layout in parameter_map(vae, rsm) if path[0] in grads}


def worst_gap(ours: dict, reference: dict) -> tuple[float, str]:
    """Largest max|ours - reference| / max|reference| over the tensors of `ours`, and its
    name. The denominator is at least 1e-4 of the largest reference entry: a tensor whose
    gradient is zero in exact arithmetic (the bias of a convolution followed by BatchNorm)
    holds rounding noise only."""
    floor = 1e-4 * max(float(t.abs().max()) for t in reference.values())
    gaps = {name: float((t - reference[name]).abs().max())
            / max(float(reference[name].abs().max()), floor, 1e-30) for name, t in ours.items()}
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst
