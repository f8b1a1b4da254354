"""Speed of minedit's CLIP against transformers' CLIPModel holding the same weights (ViT-B/32 shape,
random weights), timed in one process, interleaved, as ratios of medians (> 1: minedit is faster).

Texts fill the whole 77-token context, so minedit's early cut at the end token gives it no advantage
in the main figure; `text_ratio_short_captions` shows the typical case separately.

    python bench/clip_speed.py     # prints JSON
"""
import argparse
import json

import torch
from transformers import CLIPConfig, CLIPModel

from minedit import clip
from minedit.tokenizer import tokenize
from timing import interleaved_medians

argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                 vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                    image_size=224, patch_size=32), projection_dim=512)
ref = CLIPModel(cfg).eval()
ours = clip.build_model(clip.from_hf(ref.state_dict()))
images = torch.randn(16, 3, 224, 224)
long_texts = tokenize(["word " * 100] * 64)  # truncated to fill all 77 positions
short_texts = tokenize(["a big red star on the left on a blue background"] * 64)


def feats(out):
    return getattr(out, "pooler_output", out)


jobs = {
    "image": (lambda: ours.encode_image(images), lambda: feats(ref.get_image_features(pixel_values=images))),
    "text": (lambda: ours.encode_text(long_texts), lambda: feats(ref.get_text_features(input_ids=long_texts))),
    "text_short_captions": (lambda: ours.encode_text(short_texts), lambda: feats(ref.get_text_features(input_ids=short_texts))),
}
result = {}
with torch.inference_mode():
    for name, (a, b) in jobs.items():
        assert (a() - b()).abs().max() < 1e-3  # same weights, same answer
        m = interleaved_medians({"minedit": a, "transformers": b}, 7)
        ma, mb = m["minedit"], m["transformers"]
        result[name] = {"minedit_s": round(ma, 4), "transformers_s": round(mb, 4), "ratio": round(mb / ma, 3)}
result["batch"] = {"image": 16, "text": 64}
print(json.dumps(result, indent=1))
