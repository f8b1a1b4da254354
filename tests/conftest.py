import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))  # for tests/_compat.py
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def open_clip():
    from _compat import import_open_clip
    return import_open_clip()
