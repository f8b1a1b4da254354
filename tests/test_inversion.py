import pytest
import torch

from minedit.clip import CLIP, CLIPConfig
from minedit.diffusion import GaussianDiffusion
from minedit.inversion import Concepts, learn, load_embeddings, save_embeddings
from minedit.prior import Prior, PriorConfig
from minedit.tokenizer import Tokenizer, tokenize


def tiny():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=16, vision_width=64, vision_layers=1, vision_patch_size=8, transformer_width=32,
                           transformer_heads=1, transformer_layers=1, context_length=24)).eval()
    prior = Prior(PriorConfig(embed_dim=16, text_width=32, max_text_len=24, width=32, layers=1, heads=2)).eval()
    return clip, prior, GaussianDiffusion(100, "cosine", "x0")


def test_added_tokens_are_whole_and_decode():
    tok = Tokenizer()
    ids = tok.add_tokens(["<s*>", "<s*>_1"])
    assert ids == [49408, 49409]
    assert tok.encode("A <S*> and <s*>_1!") == tok.encode("a") + [49408] + tok.encode("and") + [49409] + tok.encode("!")
    assert tok.decode(tok.encode("a <s*> star")) == "a <s*> star"


def test_placeholder_with_the_initializer_vector_equals_the_initializer_word():
    clip, _, _ = tiny()
    obj = Tokenizer().encode("object")[0]
    c = Concepts({"<s*>": clip.token_embedding.weight[obj].detach()[None]})
    with torch.no_grad():
        z_word = clip.encode_text(tokenize(["a red object at the top"], 24))
        z_tok = clip.encode_text(c.tokenize(["a red <s*> at the top"], 24), token_overrides=c.overrides)
        c2 = Concepts({"<s*>": torch.randn(1, 32)})
        z_other = clip.encode_text(c2.tokenize(["a red <s*> at the top"], 24), token_overrides=c2.overrides)
    torch.testing.assert_close(z_tok, z_word)
    assert (z_other - z_word).abs().max() > 1e-3  # the placeholder's vector changes the text embedding


def test_multi_vector_words_expand_and_unknown_ids_are_refused():
    clip, _, _ = tiny()
    c = Concepts({"<s*>": torch.randn(3, 32)})
    assert c.expand("a <s*> here") == "a <s*> <s*>_1 <s*>_2 here"
    ids = c.tokenize(["a <s*>"], 24)[0]
    assert ids[2:5].tolist() == [49408, 49409, 49410]
    with pytest.raises(ValueError, match="past the vocabulary"):
        clip.encode_text(ids[None])


def test_learning_changes_only_the_new_vectors():
    clip, prior, diffusion = tiny()
    before = {k: v.clone() for k, v in list(clip.state_dict().items()) + [("prior." + k, v) for k, v in prior.state_dict().items()]}
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    init = clip.token_embedding.weight[Tokenizer().encode("object")[0]].detach().clone()
    emb = learn(clip, prior, diffusion, images, "<s*>", "object", n_vectors=2, steps=5, lr=1e-2, batch_size=4, progress=False)
    after = {k: v for k, v in list(clip.state_dict().items()) + [("prior." + k, v) for k, v in prior.state_dict().items()]}
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"
    assert emb["<s*>"].shape == (2, 32)
    assert (emb["<s*>"] - init).abs().max() > 1e-3


def test_regularization_keeps_the_vector_closer_to_its_initializer():
    clip, prior, diffusion = tiny()
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    init = clip.token_embedding.weight[Tokenizer().encode("object")[0]].detach().clone()
    drift = lambda reg: (learn(clip, prior, diffusion, images, reg=reg, steps=30, lr=5e-2, batch_size=4,
                               progress=False)["<s*>"] - init).norm().item()
    assert drift(100.0) < 0.5 * drift(0.0)


def test_file_formats_round_trip(tmp_path):
    vec = torch.randn(2, 32)
    save_embeddings({"<s*>": vec}, tmp_path / "learned.pt")  # diffusers
    assert torch.equal(load_embeddings(tmp_path / "learned.pt")["<s*>"], vec)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "mything", "step": 10}, tmp_path / "a1111.pt")
    assert torch.equal(load_embeddings(tmp_path / "a1111.pt")["mything"], vec)
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})  # original textual inversion
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": pd}, tmp_path / "embeddings.pt")
    assert torch.equal(load_embeddings(tmp_path / "embeddings.pt")["*"], vec)
    torch.save({"<one>": vec[0]}, tmp_path / "one.bin")  # a 1-D vector is one vector
    assert load_embeddings(tmp_path / "one.bin")["<one>"].shape == (1, 32)
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file
    save_file({"<s*>": vec.contiguous()}, str(tmp_path / "learned.safetensors"))
    assert torch.equal(load_embeddings(str(tmp_path / "learned.safetensors"))["<s*>"], vec)
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a textual-inversion file"):
        load_embeddings(tmp_path / "bad.pt")
