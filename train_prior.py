"""
Train the unCLIP diffusion prior: CLIP text embedding (and token states) -> CLIP image embedding
(Ramesh et al. 2022). It denoises the standardized image embedding with x0 prediction; 10% text dropout
makes classifier-free guidance possible. Text and image features come from a frozen CLIP, computed
once and cached; the training loop is train_decoder.py's (minedit/training.py).

    python train_prior.py                                  # the shipped checkpoints/prior.pt, toy world, CPU
    python train_prior.py --steps 200 --out /tmp/prior.pt  # a quick run
    python train_prior.py --data my_photos/ --clip ViT-B-32.pt --device cuda   # images with same-name .txt captions
    torchrun --nproc_per_node 2 train_prior.py ...         # DistributedDataParallel (gloo on CPU, nccl on GPU)
"""

import argparse
from dataclasses import asdict, dataclass

import torch

from minedit import training
from minedit.diffusion import GaussianDiffusion
from minedit.prior import CHECKPOINT_VERSION, Prior, PriorConfig
from minedit.utils import CHECKPOINTS, file_hash, seed_everything


@dataclass
class TrainConfig:
    steps: int = 3600
    batch_size: int = 128       # per process
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    p_uncond: float = 0.1       # text dropout for classifier-free guidance
    n_images: int = 50000       # toy-world training scenes (their renders and CLIP features are cached)
    seed: int = 0
    timesteps: int = 1000
    schedule: str = "cosine"
    prediction: str = "x0"
    bf16: bool = True
    save_every: int = 1000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_dataclass_flags(p, TrainConfig, PriorConfig)
    p.add_argument("--clip", default=str(CHECKPOINTS / "clip.pt"), help="CLIP weights that clip.load reads (default: %(default)s)")
    p.add_argument("--data", default=None, help="a folder of images with same-name .txt captions, instead of the toy world")
    p.add_argument("--out", default=str(CHECKPOINTS / "prior.pt"), help="checkpoint path (default: %(default)s)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    args = vars(p.parse_args())
    training.check_paths(args, "clip", "data")
    training.check_out(args["out"])
    ckpt = training.checkpoint_arg(args, "resume", "prior")
    rank, world, device = training.setup_distributed(args["device"])
    tc = training.override(TrainConfig(**ckpt["train_config"]) if ckpt else TrainConfig(), args)
    tc.bf16 = tc.bf16 and not args["no_bf16"]
    seed_everything(tc.seed + rank)

    # data: (caption, image) pairs as CLIP features, computed once and cached
    if args["data"]:
        try:
            paths, pils, _ = training.folder_images(args["data"], 32)
            texts = training.folder_captions(paths)
        except ValueError as e:
            training.fail(f"--data {args['data']}: {e}")
        image_emb = training.clip_image_embeddings(args["clip"], pils)
        text = training.clip_text_features(args["clip"], texts)
    else:
        _, data, image_emb = training.toy_training_set(args["clip"], tc.n_images, tc.seed, 32)
        text = training.toy_caption_features(args["clip"], data)
    base = PriorConfig(**ckpt["config"]) if ckpt else PriorConfig()
    mc = training.override(base, args)
    mc.embed_dim, mc.text_width = image_emb.shape[1], text["states"].shape[2]
    if not ckpt:  # token states are padded to a fixed length: the longest training caption, at most --max-text-len
        mc.max_text_len = min(mc.max_text_len, text["states"].shape[1])

    prior = Prior(mc).to(device)
    prior.set_stats(image_emb.to(device))
    diffusion = GaussianDiffusion(tc.timesteps, tc.schedule, tc.prediction).to(device)
    x_all = prior.standardize(image_emb.to(device))
    if rank == 0:
        print(f"prior: {sum(p.numel() for p in prior.parameters()) / 1e6:.2f} M parameters; {len(x_all)} pairs; "
              f"embed dim {mc.embed_dim}; text length {mc.max_text_len}; {world} process(es) on {device}; seed {tc.seed}; "
              f"steps {ckpt['step'] if ckpt else 0} -> {tc.steps}")

    def loss_fn(model, step, g):
        idx = torch.randint(0, len(x_all), (tc.batch_size,), generator=g)
        drop = (torch.rand(tc.batch_size, generator=g) < tc.p_uncond).to(device)
        kw = {"text_emb": text["emb"][idx].to(device), "text_states": text["states"][idx].float().to(device),
              "text_mask": text["mask"][idx].to(device), "drop_text": drop}
        return diffusion.training_losses(model, x_all[idx], model_kwargs=kw, generator=g).mean()

    meta = {"kind": "prior", "version": CHECKPOINT_VERSION, "config": asdict(mc), "clip_sha256_16": file_hash(args["clip"])}
    training.fit(prior, loss_fn, tc, device, rank, world, ckpt, args["out"], meta, "prior", unit="pairs")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
