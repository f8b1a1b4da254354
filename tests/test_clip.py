"""minedit's CLIP against reference implementations holding the same random weights (max abs diff <= 1e-5, fp32)."""
import pytest
import torch

from minedit import clip
from minedit.tokenizer import tokenize

TOL = 1e-5
TEXTS = ["a red star on the left", "hello world &amp; more", "", "a big blue heart in the top left corner in neon lights"]


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def oc_model(open_clip):
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32, quick_gelu=True,
                           vision_cfg=dict(image_size=32, layers=2, width=128, patch_size=8),
                           text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2))
    return randomize(model)


def inputs():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), tokenize(TEXTS)


@torch.no_grad()
def assert_same(model, ref_image, ref_text):
    img, txt = inputs()
    assert (model.encode_image(img) - ref_image(img)).abs().max() <= TOL
    assert (model.encode_text(txt) - ref_text(txt)).abs().max() <= TOL


def test_open_clip_state_dict(oc_model, tmp_path):
    torch.save(oc_model.state_dict(), tmp_path / "oc.pt")
    model, preprocess = clip.load(tmp_path / "oc.pt")
    assert model.config.transformer_heads == 2 and model.config.vision_layers == 2 and preprocess.n_px == 32
    assert_same(model, oc_model.encode_image, oc_model.encode_text)
    # the reverse direction: minedit's state dict loads into open_clip with strict=True
    oc_model.load_state_dict(model.state_dict(), strict=True)


def test_open_clip_resnet_state_dict(open_clip, tmp_path):
    """The ModifiedResNet tower (OpenAI's RN50 family), BatchNorm running statistics included."""
    torch.manual_seed(0)
    oc = randomize(open_clip.CLIP(embed_dim=32, quick_gelu=True, vision_cfg=dict(image_size=64, layers=(1, 2, 1, 1), width=32),
                                  text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)))
    g = torch.Generator().manual_seed(2)
    for name, b in oc.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            b.copy_(torch.rand(b.shape, generator=g) + (0.5 if name.endswith("var") else -0.5))
    torch.save(oc.state_dict(), tmp_path / "rn.pt")
    model, preprocess = clip.load(tmp_path / "rn.pt")
    assert model.config.vision_layers == (1, 2, 1, 1) and model.config.vision_width == 32 and preprocess.n_px == 64
    img, txt = torch.randn(3, 3, 64, 64, generator=g), tokenize(TEXTS)
    with torch.no_grad():
        assert (model.encode_image(img) - oc.encode_image(img)).abs().max() <= TOL  # outputs are ~0.4 in size
        assert (model.encode_text(txt) - oc.encode_text(txt)).abs().max() <= TOL


def test_minedit_resnet_checkpoint_round_trip(tmp_path):
    config = clip.CLIPConfig(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                             transformer_width=64, transformer_heads=1, transformer_layers=1)
    model = clip.CLIP(config).eval()
    torch.save(clip.checkpoint(model, keep_ids=range(49408)), tmp_path / "rn.pt")
    loaded, _ = clip.load(tmp_path / "rn.pt")
    assert loaded.config == config
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # fp16 storage: agreement to about 1e-3 relative
        assert torch.allclose(loaded.encode_image(img), model.encode_image(img), rtol=1e-2, atol=1e-2)


def test_gelu_variant_matters(oc_model):
    model = clip.build_model(oc_model.state_dict(), quick_gelu=False)
    img, _ = inputs()
    with torch.no_grad():
        assert (model.encode_image(img) - oc_model.encode_image(img)).abs().max() > 1e-4


def test_openai_torchscript_archive(oc_model, tmp_path):
    """A TorchScript archive as OpenAI releases them: traced, with the three extra 0-d tensors."""
    img, txt = inputs()
    m = randomize(type(oc_model)(embed_dim=32, quick_gelu=True, vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8),
                                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)))
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(m, name):
            delattr(m, name)
        m.register_buffer(name, torch.tensor(value))
    traced = torch.jit.trace_module(m, {"encode_image": img, "encode_text": txt}, check_trace=False)
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    with pytest.raises(RuntimeError):
        torch.load(tmp_path / "ViT-tiny.pt", weights_only=True)  # why the loader needs torch.jit.load
    model, _ = clip.load(tmp_path / "ViT-tiny.pt")
    assert_same(model, m.encode_image, m.encode_text)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import CLIPConfig, CLIPModel
    cfg = CLIPConfig(text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=77, vocab_size=49408),
                     vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=32)
    return randomize(CLIPModel(cfg))


def hf_features(fn, **kw):
    out = fn(**kw)
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_hugging_face_state_dict(hf_model, tmp_path, fmt):
    sd = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # as older hub files carry
    path = tmp_path / f"model.{fmt}"
    if fmt == "bin":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    model, _ = clip.load(path)
    assert_same(model, lambda x: hf_features(hf_model.get_image_features, pixel_values=x),
                lambda t: hf_features(hf_model.get_text_features, input_ids=t))


def test_truncated_checkpoint_names_the_keys(oc_model, tmp_path):
    sd = dict(oc_model.state_dict())
    sd.pop("transformer.resblocks.1.mlp.c_fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['transformer.resblocks.1.mlp.c_fc.bias'\].*unexpected keys \['extra.weight'\]"):
        clip.build_model(sd)
    sd = dict(oc_model.state_dict())
    sd.pop("visual.conv1.weight")
    with pytest.raises(ValueError, match="visual.conv1.weight"):
        clip.build_model(sd)


def test_preprocess_matches_hugging_face_image_processor():
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor
    rng = np.random.default_rng(0)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for w, h in ((50, 40), (33, 80), (32, 32), (101, 64)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = clip.Preprocess(32)(image)
        ref = torch.as_tensor(np.asarray(proc(images=image, return_tensors="np")["pixel_values"][0]))
        assert ours.shape == (3, 32, 32)
        assert (ours - ref).abs().max() < 0.02, (w, h)  # PIL resize vs numpy rounding: under one grey level / std


def test_token_overrides_change_only_that_token(oc_model):
    model = clip.build_model(oc_model.state_dict())
    txt = tokenize(["a red star", "a blue heart"])
    red = txt[0, 2].item()
    with torch.no_grad():
        base = model.encode_text(txt)
        over = model.encode_text(txt, token_overrides={red: torch.randn(128)})
    assert (over[0] - base[0]).abs().max() > 1e-3 and torch.equal(over[1], base[1])


def test_text_states_path_matches_pooled_path(oc_model):
    """encode_text computes only the end token in its last block; the full-states path (used for
    cross-attention) must give the same embedding, at every end-token position."""
    model = clip.build_model(oc_model.state_dict())
    txt = tokenize(TEXTS)
    with torch.no_grad():
        z, states = model.encode_text(txt, return_states=True)
        assert (model.encode_text(txt) - z).abs().max() <= TOL
    assert states.shape == (4, int((txt == 49407).int().argmax(-1).max()) + 1, 128)


def test_forward_logits_and_checkpoint_round_trip(oc_model, tmp_path):
    model = clip.build_model(oc_model.state_dict())
    img, txt = inputs()
    with torch.no_grad():
        li, lt = model(img, txt)
    assert li.shape == (3, 4) and torch.allclose(li, lt.t())
    keep = set(txt.flatten().tolist())
    torch.save(clip.checkpoint(model, keep), tmp_path / "m.pt")
    again, _ = clip.load(tmp_path / "m.pt")
    with torch.no_grad():  # fp16 storage: close, not exact
        assert (again.encode_text(txt) - model.encode_text(txt)).abs().max() < 1e-2
