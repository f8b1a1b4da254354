"""
Train a UNet of minedit/unet.py, for one of two tasks:

--task decoder (default): the unCLIP decoder (Ramesh et al. 2022), which denoises images conditioned on
    their CLIP image embedding, with 10% embedding dropout so classifier-free guidance works. --caption
    also feeds it the caption's CLIP token states by cross-attention, the text path unCLIP kept from GLIDE
    (dropped with the embedding, and 10% of the time alone).
--task instruct: the instruction-editing model (Brooks et al. 2023, InstructPix2Pix): the source image
    is concatenated to x_t (6 input channels), the instruction enters as its CLIP text embedding (in the
    decoder's embedding slot) and its token states (cross-attention), and text / image / both are dropped
    5% of the time each for two-condition guidance. As InstructPix2Pix, it starts from the shipped decoder
    (checkpoints/decoder.pt, when that was trained on the --clip given), its new input channels
    zero-initialized; --init none trains from scratch. Unlike the paper, it diffuses the change
    (target - source) / 2 rather than the target (measured better here, see the README; --no-residual
    is the paper's choice). It differs from the decoder's defaults in two: warmup 100, lr 2e-3.

CLIP features come from a frozen CLIP and are computed once and cached (.cache/). On a GPU the training
set and its features live on the device. The defaults are the CPU recipes (about 20-30 min on 2 cores);
the shipped decoder.pt and instruct.pt are the same recipes scaled up on one H100 (checkpoints/README.md).

    python train_decoder.py                                  # the decoder, toy world, CPU recipe (~100k images)
    python train_decoder.py --task instruct                  # the instruct model, CPU recipe (~100k triplets)
    python train_decoder.py --n-images 200000 --batch-size 512 --lr 2e-3 --warmup 500 --ema-decay 0.999 \
        --steps 2800                                         # the shipped decoder.pt (3 min on an H100)
    python train_decoder.py --steps 100 --out /tmp/dec.pt    # a quick run
    python train_decoder.py --task instruct --resume checkpoints/instruct.pt --steps 8000 --lr 5e-4 \
        --edit-kinds style,style,noop,recolor,reshape,move,resize,background,add,remove   # weigh edit kinds
    python train_decoder.py --task instruct --average checkpoints/instruct.pt runs/ft/instruct.pt \
        --out runs/mix/instruct.pt                           # the mean of two models' weights (WiSE-FT)
    python train_decoder.py --caption --n-images 50000 --batch-size 64 --lr 1e-3 --warmup 100 --steps 3000 \
        --out runs/cap/decoder.pt                            # a decoder that also reads the caption (from decoder.pt)
    python train_decoder.py --data my_photos/ --clip ViT-B-32.pt --image-size 64 --attention-resolutions 16 --device cuda
    torchrun --nproc_per_node 2 train_decoder.py ...         # DistributedDataParallel (gloo on CPU, nccl on GPU)
"""

import argparse
import os
from dataclasses import asdict, dataclass, replace

import torch

from minedit import toyworld as tw
from minedit import training
from minedit.clip import text_tower_hash
from minedit.diffusion import GaussianDiffusion
from minedit.guidance import condition_dropout, decoder_kwargs, instruct_cfg, instruct_kwargs
from minedit.pipeline import decoder_model, instruct_bound, instruct_result, instruct_variable, unet_config
from minedit.unet import UNet, UNetConfig
from minedit.utils import CHECKPOINTS, file_hash, image_grid, save_checkpoint, save_image_atomic, seed_everything, to_image


@dataclass
class TrainConfig:
    task: str = "decoder"       # decoder | instruct
    steps: int = 3200
    batch_size: int = 32        # per process; at a fixed image budget, 32 beat 64 (more steps; EXPERIMENTS.md)
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.995     # short runs: average over the last ~200 steps
    p_uncond: float = 0.1       # decoder: embedding dropout for classifier-free guidance (and the caption with it)
    p_caption: float = 0.1      # decoder with --caption: drop the caption alone (the embedding kept)
    p_text: float = 0.05        # instruct: drop the instruction only
    p_image: float = 0.05       # instruct: drop the source image only
    p_both: float = 0.05        # instruct: drop both
    n_images: int = 20000       # toy-world training images or edit triplets (rendered once, cached)
    seed: int = 0
    timesteps: int = 1000
    schedule: str = "cosine"
    prediction: str = "v"         # v = sqrt(abar) eps - sqrt(1 - abar) x0: usable x0 estimates at every t
    snr_gamma: float = 5.0      # Min-SNR loss weighting (Hang et al. 2023), 0 = off; at half length the decoder
                                # nearly matched its unweighted full-length run, and at full length the
                                # instruct model made more of the requested edits (EXPERIMENTS.md)
    bf16: bool = True
    sample_every: int = 800
    save_every: int = 800
    guidance: float = 3.0       # decoder sample grids
    cfg_image: float = 1.0      # instruct sample grids (the edit benchmark's choice for the shipped model)
    cfg_text: float = 2.0
    text_cond: str = "both"     # instruct: the instruction enters as "both", "emb" (pooled) or "states" (tokens)
    change_weight: float = 0.0  # instruct: pixels the edit changes weigh 1 + this in the loss, the rest 1,
                                # normalized to mean 1 per triplet (0 = off; EXPERIMENTS.md)
    edit_kinds: str = ""        # instruct: the training triplets' edit kinds, comma-separated, cycled (repeats
                                # weigh a kind more); "" draws all nine uniformly
    object_weight: float = 0.0  # decoder, toy world: the objects' pixels weigh 1 + this in the loss, the rest 1,
                                # normalized to mean 1 per image (0 = off; 4 drew extra objects, EXPERIMENTS.md)
    two_object_share: float = 0.0  # decoder, toy world: the share of two-object scenes among the images drawn
                                # for each batch (0 = as the toy world draws scenes, about 0.40; 0.7: EXPERIMENTS.md)
    self_cond: float = 0.0      # decoder: self-conditioning (Chen et al. 2022): the model also reads its own x0
                                # estimate, fed in this share of batches (the paper: 0.5); 0 = off (EXPERIMENTS.md)


# --task instruct changes these defaults (the shipped checkpoints/instruct.pt): fine-tuning from the
# decoder, lr 2e-3 edited more than 1e-3 and 5e-4 (EXPERIMENTS.md, session 15)
INSTRUCT = {"warmup": 100, "lr": 2e-3}


@torch.no_grad()
def sample_grid(unet, diffusion, emb, images, guidance, path, seed=0, caption=None):
    """A PNG: the images whose embeddings (and captions) condition the decoder (top row), and decoder samples (bottom)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(emb), unet.config.out_channels, images.shape[1], images.shape[2], generator=g)
    x = diffusion.ddim_sample(decoder_model(unet, emb, guidance, caption, diffusion), noise=noise, steps=25)
    save_image_atomic(image_grid(torch.cat([torch.from_numpy(images), torch.from_numpy(to_image(x))]).numpy(), len(emb)), path)


@torch.no_grad()
def instruct_grid(unet, diffusion, pairs, text, s_image, s_text, path, seed=0):
    """A PNG: sources (top row), exact targets (middle), edits (bottom)."""
    src = pairs[:, 0].permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(seed)
    model = instruct_cfg(unet, s_image, s_text, src, text["emb"], text["states"].float(), text["mask"])
    x = diffusion.ddim_sample(model, noise=torch.randn(src.shape, generator=g), steps=25, clip_denoised=instruct_bound(unet))
    x = instruct_result(unet, src, x)
    rows = torch.cat([pairs[:, 0], pairs[:, 1], torch.from_numpy(to_image(x))])
    save_image_atomic(image_grid(rows.numpy(), len(src)), path)


def pixel_weights(mask, w):
    """Per-pixel loss weights from a bool mask (B, 1, H, W): 1 + w inside the mask, 1 outside, scaled to
    mean 1 per image so that every image weighs the same. None when w is 0 (no weighting). A mask read
    from the clean image moves the loss's minimiser from E[x0 | x_t] to E[w x0 | x_t] / E[w | x_t], a
    denoiser that expects more of what the mask marks (EXPERIMENTS.md, session 37)."""
    if not w:
        return None
    weight = 1 + w * mask.float()
    return weight / weight.mean((1, 2, 3), keepdim=True)


def object_masks(images, scenes):
    """bool (N, 1, H, W): where each toy-world image (uint8 (N, H, W, 3)) differs from its Scene drawn without
    objects (the same background and style), i.e. the objects' pixels, a neon glow included. An empty scene
    is rendered once per (background, style)."""
    empty = {}
    res = images.shape[1]
    masks = torch.zeros(len(images), 1, res, res, dtype=torch.bool)
    for i, s in enumerate(scenes):
        key = (s.background, s.style)
        if key not in empty:
            empty[key] = tw.render(replace(s, objects=()), res)
        masks[i, 0] = torch.from_numpy((images[i] != empty[key]).any(-1))
    return masks


def two_object_draw(counts, share):
    """Each image's probability of being drawn, from its scene's object count, so that two-object scenes make
    up `share` of the draws and every scene with the same count is equally likely."""
    two = torch.tensor(counts) == 2
    if not two.any() or (share < 1 and two.all()):
        raise ValueError("the training set needs both one- and two-object scenes")
    return torch.where(two, share / two.sum(), (1 - share) / (~two).sum().clamp(min=1))


def init_from_decoder(unet, decoder_ckpt):
    """InstructPix2Pix's initialization from a decoder checkpoint (dict): every weight the two share; the
    input conv's extra channels start at zero, so at step 0 the model is the decoder, blind to the source.
    The instruct model's token-state projection starts fresh, and the decoder's embedding slot is
    dropped when the instruct model has none (--text-cond states); any other weight the instruct model
    lacks, or has in another shape, means another architecture: a ValueError. Returns the names loaded."""
    if decoder_ckpt.get("config", {}).get("self_condition", False) != unet.config.self_condition:
        raise ValueError("one of the two reads its own x0 estimate (--self-cond) and the other does not")
    own = unet.state_dict()
    loaded = []
    for k, v in decoder_ckpt["model"].items():
        if k not in own:
            if not unet.config.embed_dim and k.startswith(("emb_proj.", "emb_tokens.", "null_emb")):
                continue
            raise ValueError(f"its UNet differs from this one: {k} is not in it")
        v = v.float()
        if own[k].shape == v.shape:
            own[k] = v
        elif k == "input_blocks.0.0.weight" and own[k].shape[0] == v.shape[0] and own[k].shape[1] > v.shape[1] \
                and own[k].shape[2:] == v.shape[2:]:
            own[k] = torch.cat([v, v.new_zeros(v.shape[0], own[k].shape[1] - v.shape[1], *v.shape[2:])], dim=1)
        else:
            raise ValueError(f"its UNet differs from this one: {k} is {tuple(v.shape)}, here {tuple(own[k].shape)}")
        loaded.append(k)
    unet.load_state_dict(own, strict=True)
    return loaded


def average(paths, task, out):
    """--average: the mean of several checkpoints' weights, written to `out` (the inputs' hashes recorded)."""
    if len(paths) < 2:
        training.fail("--average: give two or more checkpoints")
    ckpts = [training.checkpoint_arg({"average": path}, "average", task) for path in paths]
    try:
        mean = training.average_checkpoints(ckpts, [file_hash(path) for path in paths])
    except ValueError as e:
        training.fail(f"--average: {e}")
    save_checkpoint(mean, out)
    print(f"wrote {out}: the mean of {len(paths)} {task} checkpoints ({', '.join(mean['averaged_from'])})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_dataclass_flags(p, TrainConfig, UNetConfig)
    p.add_argument("--clip", default=str(CHECKPOINTS / "clip.pt"), help="CLIP weights that clip.load reads (default: %(default)s)")
    p.add_argument("--data", default=None, help="decoder: a folder of images to train on instead of the toy world")
    p.add_argument("--caption", action="store_true",
                   help="decoder: also condition on each scene's caption (its CLIP token states, by cross-attention), the "
                        "text path unCLIP kept from GLIDE; starts from a decoder as --task instruct does (see --init)")
    p.add_argument("--init", default=None, help="start from this decoder checkpoint's weights (a fresh optimizer and schedule; "
                        "new weights, such as instruct's extra input channels, zero-initialized as in InstructPix2Pix, or "
                        "fresh); 'none' trains from scratch (default: checkpoints/decoder.pt for --task instruct and "
                        "--caption when it was trained on --clip, else from scratch)")
    p.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/<task>.pt)")
    p.add_argument("--samples", default=None, help="folder for sample grids (default: runs/<task>)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.add_argument("--average", nargs="+", metavar="FILE", default=None,
                   help="train nothing: write the tensor-by-tensor mean of these checkpoints of --task's model to --out "
                        "(WiSE-FT's interpolation when they are a model and its fine-tune)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    p.add_argument("--no-residual", action="store_true",
                   help="instruct: diffuse the target image itself, as InstructPix2Pix, not the change (target - source) * --residual-scale")
    args = vars(p.parse_args())
    task = args["task"] or "decoder"
    if task not in ("decoder", "instruct"):
        training.fail(f"--task {task}: must be decoder or instruct")
    if args["text_cond"] not in (None, "both", "emb", "states"):
        training.fail(f"--text-cond {args['text_cond']}: must be both, emb or states")
    if args["edit_kinds"] and (bad := set(args["edit_kinds"].split(",")) - set(tw.EDIT_KINDS)):
        training.fail(f"--edit-kinds: unknown edit kind(s) {sorted(bad)}; use {', '.join(tw.EDIT_KINDS)}")
    if args["edit_kinds"] and task != "instruct":
        training.fail("--edit-kinds: only for --task instruct")
    for flag in ("object_weight", "two_object_share"):
        if args[flag] and (task != "decoder" or args["data"]):
            training.fail(f"--{flag.replace('_', '-')}: only for --task decoder on the toy world (it needs each scene's objects)")
    if args["self_cond"] and task != "decoder":
        training.fail("--self-cond: only for --task decoder")
    if args["self_cond"] and args["self_cond"] > 1:
        training.fail(f"--self-cond {args['self_cond']}: a share of batches, at most 1")
    if args["two_object_share"] and args["two_object_share"] > 1:
        training.fail(f"--two-object-share {args['two_object_share']}: a share, at most 1")
    out = args["out"] or str(CHECKPOINTS / f"{task}.pt")
    training.check_out(out)
    if args["average"]:
        average(args["average"], task, out)
        return  # nothing else is read: no CLIP, no --resume, no decoder to start from
    training.check_paths(args, "clip", "data")
    ckpt = training.checkpoint_arg(args, "resume", task)
    clip_tag = file_hash(args["clip"])
    if args["caption"] and task != "decoder":
        training.fail("--caption: only for --task decoder")
    if args["caption"] and ckpt and not ckpt["config"].get("context_dim"):
        training.fail(f"--caption: --resume {args['resume']} was trained without captions")
    caption = args["caption"] or bool(ckpt and task == "decoder" and ckpt["config"].get("context_dim"))
    # the instruct model and a caption decoder start from checkpoints/decoder.pt unless told otherwise
    implicit = not args["init"] and (task == "instruct" or caption) and not ckpt and (CHECKPOINTS / "decoder.pt").exists()
    if implicit:
        args["init"] = str(CHECKPOINTS / "decoder.pt")
    elif args["init"] == "none":
        args["init"] = None
    init = None if ckpt else training.checkpoint_arg(args, "init", "decoder")
    if implicit and init.get("clip_sha256_16") != clip_tag:  # the default start needs a decoder of this CLIP
        print(f"{args['init']} was trained on another CLIP; the {task} model trains from scratch (--init FILE names a decoder)")
        init = args["init"] = None
    sample_dir = args["samples"] or f"runs/{task}"

    rank, world, device = training.setup_distributed(args["device"])
    fresh = replace(TrainConfig(), task="instruct", **INSTRUCT) if task == "instruct" else TrainConfig()
    # checkpoints from before Min-SNR weighting trained without it
    tc = training.override(TrainConfig(**{"snr_gamma": 0.0, **ckpt["train_config"]}) if ckpt else fresh, args)
    tc.task = task
    tc.bf16 = tc.bf16 and not args["no_bf16"]
    seed_everything(tc.seed + rank)
    res = args["image_size"] or UNetConfig.image_size
    base = unet_config(ckpt["config"]) if ckpt else UNetConfig()
    if (task == "instruct" and not ckpt) or init:  # the decoder's architecture
        base = unet_config(init["config"]) if init else UNetConfig()
        if task == "instruct":  # with the source image's channels
            base.in_channels, base.self_condition = 2 * base.out_channels, False
    mc = training.override(base, args)
    sizes = [res >> level for level in range(len(mc.channel_mult))]  # the feature maps' sides, level by level
    if args["attention_resolutions"] and not set(mc.attention_resolutions) <= set(sizes):
        training.fail(f"--attention-resolutions: the feature maps at {res} px are {','.join(map(str, sizes))}")
    if not ckpt:
        mc.residual = task == "instruct" and not args["no_residual"]
    if bool(tc.self_cond) != mc.self_condition:
        if ckpt:
            training.fail(f"--self-cond: --resume {args['resume']} was trained "
                          f"{'with' if mc.self_condition else 'without'} self-conditioning")
        mc.self_condition = bool(tc.self_cond)  # its estimate's channels join the input, or leave it
        mc.in_channels += mc.out_channels if mc.self_condition else -mc.out_channels

    # data, as uint8 arrays and CLIP features computed once and cached
    masks = None  # decoder --object-weight: the objects' pixels of every training image
    draw = None   # decoder --two-object-share: each training image's probability of being drawn
    if task == "decoder":
        if args["data"]:
            try:
                paths, pils, images = training.folder_images(args["data"], res)
                texts = training.folder_captions(paths) if caption else None
            except ValueError as e:
                training.fail(f"--data {args['data']}: {e}")
            emb = training.clip_image_embeddings(args["clip"], pils, device=device)
            text = training.clip_text_features(args["clip"], texts, device=device) if caption else None
        else:
            images, scenes, emb = training.toy_training_set(args["clip"], tc.n_images, tc.seed, res, device=device)
            text = training.toy_caption_features(args["clip"], scenes) if caption else None
            listed = [scenes.scene(i) for i in range(len(images))] if tc.object_weight or tc.two_object_share else None
            masks = object_masks(images, listed) if tc.object_weight else None
            if tc.two_object_share:
                try:
                    draw = two_object_draw([len(s.objects) for s in listed], tc.two_object_share)
                except ValueError as e:
                    training.fail(f"--two-object-share: {e} (--n-images {tc.n_images})")
        mc.embed_dim, mc.image_size = emb.shape[1], images.shape[1]
        mc.context_dim = text["states"].shape[2] if caption else 0
        x_all = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W)
        what = f"{len(x_all)} images"
    else:
        kinds = tc.edit_kinds.split(",") if tc.edit_kinds else None
        data = tw.EditDataset("train", n=tc.n_images, seed=tc.seed, res=res, cache=".cache", kinds=kinds)
        pairs = torch.from_numpy(data.images)  # uint8 (N, 2, H, W, 3): source, target
        text = training.clip_text_features(args["clip"], lambda: [data.edit(i).instruction for i in range(len(data))],
                                           f".cache/clip-instr-{clip_tag}-train{data.mix}-n{tc.n_images}-seed{tc.seed}.pt",
                                           device=device)
        mc.embed_dim, mc.context_dim, mc.image_size = text["emb"].shape[1], text["states"].shape[2], res
        mc.embed_dim = 0 if tc.text_cond == "states" else mc.embed_dim
        mc.context_dim = 0 if tc.text_cond == "emb" else mc.context_dim
        x_all = pairs.permute(0, 1, 4, 2, 3)  # uint8 (N, 2, 3, H, W)
        what = f"{len(x_all)} edit triplets"
    # the whole training set lives on the training device (on a GPU: no host copies per step)
    x_all = x_all.to(device)
    if task == "decoder":
        emb = emb.to(device)
    if text is not None:
        text = {k: v.to(device) for k, v in text.items()}
    if masks is not None:
        masks = masks.to(device)

    unet = UNet(mc).to(device)
    if init:
        try:
            n = len(init_from_decoder(unet, init))
        except ValueError as e:
            training.fail(f"--init {args['init']}: {e} (pass --init none, or the decoder's architecture flags)")
        if rank == 0:
            print(f"initialized {n} of {len(unet.state_dict())} tensors from {args['init']}")
    diffusion = GaussianDiffusion(tc.timesteps, tc.schedule, tc.prediction).to(device)
    if rank == 0:
        print(f"{task}: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters; {what} "
              f"{res}x{res}; {world} process(es) on {device}; seed {tc.seed}; steps {ckpt['step'] if ckpt else 0} -> {tc.steps}")

    def decoder_loss(model, step, g):
        idx = (torch.randint(0, len(x_all), (tc.batch_size,), generator=g) if draw is None
               else torch.multinomial(draw, tc.batch_size, replacement=True, generator=g)).to(device)
        x0 = x_all[idx].float() / 127.5 - 1
        u = torch.rand(tc.batch_size, generator=g).to(device)
        drop = u < tc.p_uncond
        # one draw: both dropped (u < p_uncond), the caption alone (the next p_caption)
        kw = decoder_kwargs(emb[idx], drop, {k: v[idx] for k, v in text.items()} if caption else None,
                            u < tc.p_uncond + tc.p_caption)
        weight = pixel_weights(masks[idx], tc.object_weight) if masks is not None else None
        return diffusion.training_losses(model, x0, model_kwargs=kw, generator=g, snr_gamma=tc.snr_gamma,
                                         weight=weight, self_cond=tc.self_cond).mean()

    def instruct_loss(model, step, g):
        idx = torch.randint(0, len(x_all), (tc.batch_size,), generator=g).to(device)
        x = x_all[idx].float() / 127.5 - 1  # (B, 2, 3, H, W)
        m = condition_dropout(tc.batch_size, tc.p_text, tc.p_image, tc.p_both, g, device)
        kw = instruct_kwargs(x[:, 0], text["emb"][idx], text["states"][idx].float(), text["mask"][idx],
                             m["drop_image"], m["drop_text"])
        x0 = instruct_variable(unet, x[:, 0], x[:, 1])
        return diffusion.training_losses(model, x0, model_kwargs=kw, generator=g, snr_gamma=tc.snr_gamma,
                                         weight=pixel_weights((x[:, 0] != x[:, 1]).any(1, keepdim=True),
                                                              tc.change_weight)).mean()

    def samples(step, ema):
        if not tc.sample_every or (step + 1) % tc.sample_every:
            return
        shadow = UNet(mc)
        shadow.load_state_dict(ema.shadow)
        os.makedirs(sample_dir, exist_ok=True)
        path = os.path.join(sample_dir, f"step{step + 1:06d}.png")
        if task == "decoder":
            sample_grid(shadow.eval(), diffusion.cpu(), emb[:8].cpu(), images[:8], tc.guidance, path,
                        caption={k: v[:8].cpu() for k, v in text.items()} if caption else None)
        else:
            instruct_grid(shadow.eval(), diffusion.cpu(), pairs[:8], {k: v[:8].cpu() for k, v in text.items()},
                          tc.cfg_image, tc.cfg_text, path)
        diffusion.to(device)

    meta = {"kind": task, "version": 1, "config": asdict(mc)}
    if task == "decoder":
        meta["clip_sha256_16"] = clip_tag
    else:  # the instruct model reads CLIP text only: it records the text tower it was trained with
        meta["clip_text_sha256_16"] = text_tower_hash(training._load_clip(args["clip"])[0])
    if init:
        meta["init_sha256_16"] = file_hash(args["init"])
    elif ckpt and "init_sha256_16" in ckpt:  # a resumed run keeps its start
        meta["init_sha256_16"] = ckpt["init_sha256_16"]
    training.fit(unet, decoder_loss if task == "decoder" else instruct_loss, tc, device, rank, world, ckpt, out,
                 meta, task, samples)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
