"""
Classifier-free guidance (Ho & Salimans 2022) as wrappers around a denoiser, outside the diffusion math.

Single condition:  e = e(∅) + s * (e(c) - e(∅));  s = 1 means no guidance (the conditional prediction).
Two conditions (InstructPix2Pix, Brooks et al. 2023, image c_I and text c_T):
    e = e(∅, ∅) + s_I * (e(c_I, ∅) - e(∅, ∅)) + s_T * (e(c_I, c_T) - e(c_I, ∅))
computed as one batched forward of 3. s_I = s_T = 1 gives the fully conditioned prediction.
"""

import torch


def cfg(model, scale, cond_kwargs, uncond_kwargs):
    """A denoiser (x, t) -> uncond + scale * (cond - uncond), as one batched forward of 2.
    cond_kwargs / uncond_kwargs are the model's keyword arguments for each branch; tensors are
    concatenated along the batch, other values must be equal. Keyword arguments of the call itself (a
    self-conditioned model's x0 estimate, `concat`) go to both branches."""
    def guided(x, t, **extra):
        if scale == 1:
            return model(x, t, **cond_kwargs, **extra)
        kw = _cat([{**cond_kwargs, **extra}, {**uncond_kwargs, **extra}])
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), **kw).chunk(2)
        return uncond + scale * (cond - uncond)
    return guided


def cfg2(model, s_image, s_text, full_kwargs, image_kwargs, none_kwargs):
    """A denoiser (x, t) -> InstructPix2Pix's two-condition guidance, as one batched forward of 3:
    e(∅,∅) + s_image * (e(c_I,∅) - e(∅,∅)) + s_text * (e(c_I,c_T) - e(c_I,∅)).
    full_kwargs condition on image and text, image_kwargs on the image only, none_kwargs on neither.
    With s_image = 1 this is single-condition CFG on the text (given the image); with s_image = s_text = 1
    it is the fully conditioned prediction."""
    def guided(x, t):
        if s_image == 1 and s_text == 1:
            return model(x, t, **full_kwargs)
        full, image, none = two_condition_predictions(model, x, t, full_kwargs, image_kwargs, none_kwargs)
        return none + s_image * (image - none) + s_text * (full - image)
    return guided


def two_condition_predictions(model, x, t, full_kwargs, image_kwargs, none_kwargs):
    """The three predictions e(c_I,c_T), e(c_I,∅), e(∅,∅) from one batched forward of 3."""
    kw = _cat([full_kwargs, image_kwargs, none_kwargs])
    return model(torch.cat([x, x, x]), torch.cat([t, t, t]), **kw).chunk(3)


def explain(model, x, t, full_kwargs, image_kwargs, none_kwargs):
    """For pictures of what guidance does: the three predictions and the two differences that s_image
    and s_text scale (dict of tensors shaped like x)."""
    full, image, none = two_condition_predictions(model, x, t, full_kwargs, image_kwargs, none_kwargs)
    return {"e(cI,cT)": full, "e(cI,0)": image, "e(0,0)": none,
            "image direction e(cI,0)-e(0,0)": image - none, "text direction e(cI,cT)-e(cI,0)": full - image}


def condition_dropout(batch_size, p_text=0.05, p_image=0.05, p_both=0.05, generator=None, device="cpu"):
    """InstructPix2Pix's condition dropout as named masks from one uniform draw u per sample:
    drop_text (u < p_text), drop_image (next p_image), drop_both (next p_both); disjoint, (B,) bool.
    Returns dict(drop_text=text dropped at all, drop_image=image dropped at all, and the three parts)."""
    u = torch.rand(batch_size, generator=generator).to(device)
    only_text = u < p_text
    only_image = (u >= p_text) & (u < p_text + p_image)
    both = (u >= p_text + p_image) & (u < p_text + p_image + p_both)
    return {"only_text": only_text, "only_image": only_image, "both": both,
            "drop_text": only_text | both, "drop_image": only_image | both}


def instruct_kwargs(source, text_emb, text_states, text_mask, drop_image=None, drop_text=None):
    """The instruction-editing UNet's keyword arguments with the nulls applied; the one place they are
    defined. The null image is zeros (the mid-gray image in [-1, 1]); the null text is the UNet's
    learned null embedding with every token state masked out. drop_* are (B,) bool or None."""
    B = source.shape[0]
    if drop_image is not None:
        source = torch.where(drop_image[:, None, None, None], torch.zeros_like(source), source)
    if drop_text is None:
        drop_text = torch.zeros(B, dtype=torch.bool, device=source.device)
    return {"concat": source, "emb": text_emb, "drop_emb": drop_text,
            "context": text_states, "context_mask": text_mask & ~drop_text[:, None]}


def decoder_kwargs(emb, drop_emb, caption=None, drop_caption=None):
    """The decoder UNet's keyword arguments with its nulls applied: a dropped embedding becomes the
    learned null embedding; a caption (dict of CLIP token "states" (B, T, W) and "mask" (B, T), for a
    decoder with unCLIP's text path) has every token masked out where drop_caption is set (default:
    where drop_emb is). drop_* are (B,) bool."""
    kw = {"emb": emb, "drop_emb": drop_emb}
    if caption is not None:
        drop = drop_emb if drop_caption is None else drop_caption
        kw["context"] = caption["states"].float()
        kw["context_mask"] = caption["mask"] & ~drop[:, None]
    return kw


def instruct_cfg(model, s_image, s_text, source, text_emb, text_states, text_mask):
    """Two-condition guidance for the instruction-editing UNet on a batch of (source, instruction)."""
    B = source.shape[0]
    keep = torch.zeros(B, dtype=torch.bool, device=source.device)
    kw = lambda drop_image, drop_text: instruct_kwargs(source, text_emb, text_states, text_mask, drop_image, drop_text)
    return cfg2(model, s_image, s_text, kw(keep, keep), kw(keep, ~keep), kw(~keep, ~keep))


def _cat(kwargs_list):
    keys = [sorted(kw) for kw in kwargs_list]
    if any(k != keys[0] for k in keys):  # a key missing in one branch would silently apply to all
        raise ValueError(f"every branch needs the same keyword arguments, got {keys}")
    out = {}
    for k in kwargs_list[0]:
        vals = [kw[k] for kw in kwargs_list]
        out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else vals[0]
    return out
