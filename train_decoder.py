"""
Train the unCLIP decoder: a UNet that denoises images conditioned on their CLIP image embedding
(Ramesh et al. 2022), with 10% embedding dropout so classifier-free guidance works at sampling time.
Embeddings come from a frozen CLIP and are computed once and cached.

    python train_decoder.py                                  # the shipped checkpoints/decoder.pt, toy world, CPU
    python train_decoder.py --steps 100 --out /tmp/dec.pt    # a quick run
    python train_decoder.py --data my_photos/ --clip ViT-B-32.pt --image-size 64 --device cuda
    torchrun --nproc_per_node 2 train_decoder.py ...         # DistributedDataParallel (gloo on CPU, nccl on GPU)
"""

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from minedit import training
from minedit.diffusion import GaussianDiffusion
from minedit.guidance import cfg
from minedit.unet import UNet, UNetConfig
from minedit.utils import CHECKPOINTS, autocast, image_grid, load_checkpoint, save_checkpoint, save_image_atomic, seed_everything, to_image


@dataclass
class TrainConfig:
    steps: int = 1400
    batch_size: int = 64        # per process
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1       # embedding dropout for classifier-free guidance
    n_images: int = 20000       # toy-world training images (rendered once, cached)
    seed: int = 0
    timesteps: int = 1000
    schedule: str = "cosine"
    prediction: str = "eps"
    bf16: bool = True
    sample_every: int = 700
    save_every: int = 700
    guidance: float = 3.0       # for the sample grids


def load_decoder(path):
    """(UNet with EMA weights, GaussianDiffusion, checkpoint dict) from a decoder checkpoint."""
    ckpt = load_checkpoint(path, kind="decoder")
    cfg_ = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
    unet = UNet(cfg_)
    unet.load_state_dict({k: v.float() for k, v in ckpt["model"].items()}, strict=True)
    tc = ckpt["train_config"]
    return unet.eval(), GaussianDiffusion(tc["timesteps"], tc["schedule"], tc["prediction"]), ckpt


@torch.no_grad()
def sample_grid(unet, diffusion, emb, images, guidance, path, seed=0):
    """A PNG: the images whose embeddings condition the decoder (top row), and decoder samples (bottom)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(emb), unet.config.out_channels, images.shape[1], images.shape[2], generator=g)
    drop = torch.ones(len(emb), dtype=torch.bool)
    model = cfg(unet, guidance, {"emb": emb, "drop_emb": ~drop}, {"emb": emb, "drop_emb": drop})
    x = diffusion.ddim_sample(model, noise=noise, steps=25)
    save_image_atomic(image_grid(torch.cat([torch.from_numpy(images), torch.from_numpy(to_image(x))]).numpy(), len(emb)), path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_dataclass_flags(p, TrainConfig, UNetConfig)
    p.add_argument("--clip", default=str(CHECKPOINTS / "clip.pt"), help="CLIP weights that clip.load reads (default: %(default)s)")
    p.add_argument("--data", default=None, help="a folder of images to train on instead of the toy world")
    p.add_argument("--out", default=str(CHECKPOINTS / "decoder.pt"), help="checkpoint path (default: %(default)s)")
    p.add_argument("--samples", default="runs/decoder", help="folder for sample grids (default: %(default)s)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    args = vars(p.parse_args())
    for flag in ("clip", "resume", "data"):
        if args[flag] and not os.path.exists(args[flag]):
            print(f"error: --{flag} {args[flag]}: no such file or folder", file=sys.stderr)
            sys.exit(2)

    rank, world, device = training.setup_distributed(args["device"])
    ckpt = load_checkpoint(args["resume"], kind="decoder") if args["resume"] else None
    tc = training.override(TrainConfig(**ckpt["train_config"]) if ckpt else TrainConfig(), args)
    tc.bf16 = tc.bf16 and not args["no_bf16"]
    seed_everything(tc.seed + rank)

    # data: uint8 images (N, H, W, 3) and their CLIP image embeddings (N, E), computed once and cached
    if args["data"]:
        res = args["image_size"] or UNetConfig.image_size
        _, pils, images = training.folder_images(args["data"], res)
        emb = training.clip_image_embeddings(args["clip"], pils)
    else:
        images, _, emb = training.toy_training_set(args["clip"], tc.n_images, tc.seed, args["image_size"] or UNetConfig.image_size)
    base = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}) if ckpt else UNetConfig()
    mc = training.override(base, args)
    mc.embed_dim, mc.image_size = emb.shape[1], images.shape[1]
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W)

    unet = UNet(mc).to(device)
    start = 0
    if ckpt:
        unet.load_state_dict({k: v.float() for k, v in ckpt.get("raw_model", ckpt["model"]).items()}, strict=True)
        start = ckpt["step"]
    ema = training.EMA(unet, tc.ema_decay)
    if ckpt:
        ema.shadow = {k: v.float().clone() for k, v in ckpt["model"].items()}
    model = torch.nn.parallel.DistributedDataParallel(unet) if world > 1 else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if ckpt and "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    diffusion = GaussianDiffusion(tc.timesteps, tc.schedule, tc.prediction).to(device)
    clip_tag = training.file_hash(args["clip"])
    if rank == 0:
        print(f"decoder: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters; {len(x_all)} images "
              f"{tuple(x_all.shape[2:])}; embed dim {mc.embed_dim}; {world} process(es) on {device}; seed {tc.seed}; "
              f"steps {start} -> {tc.steps}")

    def save(step, final):
        if rank != 0:
            return
        out = {"kind": "decoder", "version": 1, "config": asdict(mc), "train_config": asdict(tc), "step": step,
               "clip_sha256_16": clip_tag, "model": {k: v.half() for k, v in ema.shadow.items()}}
        if not final:
            out["raw_model"] = unet.state_dict()
            out["optimizer"] = opt.state_dict()
        save_checkpoint(out, args["out"])

    g = torch.Generator().manual_seed(tc.seed * 1000 + rank)
    t0, seen = time.time(), 0
    pbar = tqdm(range(start, tc.steps), desc="decoder", mininterval=2, disable=rank != 0)
    for step in pbar:
        idx = torch.randint(0, len(x_all), (tc.batch_size,), generator=g)
        x0 = (x_all[idx].float() / 127.5 - 1).to(device)
        e = emb[idx].to(device)
        drop = (torch.rand(tc.batch_size, generator=g) < tc.p_uncond).to(device)
        for group in opt.param_groups:
            group["lr"] = training.lr_at(step, tc.lr, tc.warmup, tc.steps)
        with autocast(device, tc.bf16):
            loss = diffusion.training_losses(model, x0, model_kwargs={"emb": e, "drop_emb": drop}, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        seen += tc.batch_size * world
        pbar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.time() - t0):.0f}")
        if rank == 0 and tc.sample_every and (step + 1) % tc.sample_every == 0:
            shadow = UNet(mc)
            shadow.load_state_dict(ema.shadow)
            os.makedirs(args["samples"], exist_ok=True)
            sample_grid(shadow.eval(), diffusion.cpu(), emb[:8], images[:8], tc.guidance,
                        os.path.join(args["samples"], f"step{step + 1:06d}.png"))
            diffusion.to(device)
        if tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < tc.steps:
            save(step + 1, final=False)
    save(tc.steps, final=True)
    if rank == 0:
        print(f"trained to step {tc.steps} in {(time.time() - t0) / 60:.1f} min; wrote {args['out']}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
