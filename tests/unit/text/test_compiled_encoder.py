"""pictor.text.compiled: the frozen encoder's TorchScript copy gives transformers' embeddings bit
for bit, loads without importing transformers, and every unusable state falls back cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from pictor.text import compiled
from pictor.text.encoders import HFTextEncoder, load_text_encoder

PROMPTS = ["a green star", "", "a b c d e f g h i j k l m n", "a b c d e f g h i j k l m n o",
           "ÜBER café ✓", "an orange square to the left of a cyan triangle"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def saved(minilm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / compiled.folder_name()
    assert compiled.save(minilm, folder, ("a red circle",))
    return folder


def encode_with_warnings(encoder, prompts):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = encoder.encode(prompts)
    return out, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_compiled_minilm_equals_transformers_bit_for_bit(minilm, saved):
    fast = compiled.load(saved)
    assert fast is not None and fast.max_length == minilm.max_length and fast.name == "minilm"
    for prompt in PROMPTS:  # one at a time, as the pipeline encodes
        (emb, mask), warned = encode_with_warnings(fast, [prompt])
        (ref_emb, ref_mask), ref_warned = encode_with_warnings(minilm, [prompt])
        assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask), prompt
        assert warned == ref_warned  # the truncated 17-token prompt warns on both paths
    assert sum(map(len, (encode_with_warnings(fast, [p])[1] for p in PROMPTS))) == 1
    (emb, mask), _ = encode_with_warnings(fast, PROMPTS)  # and as a batch
    (ref_emb, ref_mask), _ = encode_with_warnings(minilm, PROMPTS)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)


def test_loading_the_compiled_encoder_does_not_import_transformers(saved):
    code = (f"import sys, torch; from pictor.text import compiled; "
            f"c = compiled.load({str(saved)!r}); emb, mask = c.encode(['a red circle']); "
            "assert 'transformers' not in sys.modules, 'transformers imported'; "
            "print(tuple(emb.shape), int(mask.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "(1, 16, 384) 5"


def test_unusable_folders_load_as_none(saved, tmp_path):
    assert compiled.load(tmp_path / "missing") is None
    meta = json.loads((saved / compiled.META_FILE).read_text())
    for change in ({"torch": "0.0"}, {"format": 999}, {"usable": False}):
        folder = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / compiled.META_FILE).write_text(json.dumps(meta | change))
        for name in (compiled.MODULE_FILE, compiled.TOKENIZER_FILE):
            (folder / name).write_bytes((saved / name).read_bytes())
        assert compiled.load(folder) is None, change
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / compiled.META_FILE).write_text(json.dumps(meta))
    (damaged / compiled.TOKENIZER_FILE).write_bytes((saved / compiled.TOKENIZER_FILE).read_bytes())
    (damaged / compiled.MODULE_FILE).write_bytes(b"not a TorchScript archive")
    assert compiled.load(damaged) is None


class PythonTokenizer:
    """A tokenizer with no `tokenizers` backend (as pure Python tokenizers are): callable like
    transformers' but nothing to compile."""

    def __init__(self, inner):
        self._inner = inner
        self.pad_token_id, self.pad_token = inner.pad_token_id, inner.pad_token

    def __call__(self, *args, **kwargs):
        return self._inner(*args, **kwargs)


def test_an_encoder_without_a_fast_tokenizer_is_marked_and_not_retried(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path / "tiny-bert"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "star"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    encoder = HFTextEncoder(folder, max_length=8)
    target = tmp_path / "cache" / compiled.folder_name()
    assert compiled.save(encoder, tmp_path / "ok")  # the real fast tokenizer compiles
    encoder.tokenizer = PythonTokenizer(encoder.tokenizer)
    assert not compiled.save(encoder, target)
    assert json.loads((target / compiled.META_FILE).read_text())["usable"] is False
    assert compiled.load(target) is None


def test_a_cache_that_cannot_be_written_is_skipped(minilm, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder's parent would be
    assert not compiled.save(minilm, blocker / compiled.folder_name())
    assert blocker.read_text() == "x"
