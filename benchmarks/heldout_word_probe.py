"""Does the frozen text encoder tell the U-Net what a held-out word means? A linear probe.

geneval-shapes-para writes every prompt in held-out phrasings (pictor.data.captions): colour
words such as "sapphire" and shape words such as "tile" that training never shows. The U-Net reads
the text encoder's token states, so it can draw a sapphire square only if the state of "sapphire"
lands where the training words for blue ("blue", "cobalt") land. This measures how far that holds:

- token states of each word (mean over its word pieces), in several contexts per word ("a {w}
  circle", "a circle in {w}", "two {w} stars", "a {w} square and a blue circle", for every shape);
- a softmax regression trained on the *training* phrasings' states, scored on the *held-out*
  words' states (8 colour classes, chance 12.5%; 4 shape classes, chance 25%);
- the same colour probe with a wider training vocabulary (ten more everyday words per colour,
  none a held-out word): does more synonym variety in the captions make held-out words readable?
- the same colour probe trained on a public colour vocabulary: the XKCD colour survey's names
  (matplotlib ships them with their RGB) labelled with the palette colour nearest in CIELAB,
  names that sit between two palette colours, or far from all, left out, and every name that
  contains a held-out word left out: does a vocabulary of hundreds of colour words make held-out
  words readable?
- the same colour probe on the mean-pooled sentence embedding (what sentence-transformers train).

Accuracy far below 1.0 bounds what any U-Net trained on these states can do with held-out colour
words, whatever its training: the information is not in its input.

    .venv/bin/python benchmarks/heldout_word_probe.py          # ~1 min, writes JSON + BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import time

import torch

from common import environment, markdown_table, update_markdown_section, write_json
from pictor.data.captions import COLOR_WORDS, SHAPE_WORDS
from pictor.text.encoders import load_text_encoder

NAME = "heldout_word_probe"
SHAPES = ("circle", "square", "triangle", "star")
COLOR_CONTEXTS = ("a {w} {s}", "a {s} in {w}", "two {w} {s}s", "a {w} {s} and a blue circle")
SHAPE_CONTEXTS = ("a red {w}", "a {w} in green", "a blue {w} and a white circle", "there is a {w}")
# Ten more everyday words per colour, none a held-out word of pictor.data.captions (checked below).
WIDER_COLOR_WORDS = {
    "red": ("ruby", "cherry", "blood red", "tomato red", "brick red", "cardinal", "rose red",
            "fire engine red"),
    "orange": ("amber", "tangerine orange", "apricot", "carrot orange", "rust orange", "marigold",
               "persimmon", "burnt orange"),
    "yellow": ("canary", "gold", "mustard", "sunflower yellow", "butter yellow", "banana yellow",
               "saffron", "honey"),
    "green": ("lime", "forest green", "olive", "mint", "grass green", "kelly green", "sage",
              "chartreuse"),
    "cyan": ("teal", "sky cyan", "aquamarine", "light blue-green", "robin egg blue", "seafoam",
             "ice blue", "cerulean"),
    "blue": ("navy", "royal blue", "azure", "indigo", "ultramarine", "denim", "cornflower",
             "midnight blue"),
    "purple": ("lavender", "plum", "lilac", "magenta", "mauve", "grape", "orchid", "eggplant"),
    "white": ("snow white", "pearl", "cream", "chalk white", "milk white", "off-white",
              "bone white", "alabaster"),
}


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) of sRGB colours in [0, 255], shape (N, 3)."""
    c = rgb.double() / 255.0
    c = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                      [0.0193, 0.1192, 0.9505]], dtype=torch.float64)
    xyz = c @ m.T / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
    f = torch.where(xyz > (6 / 29) ** 3, xyz ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], dim=1)


def survey_color_words(heldout: set[str], max_delta_e: float = 30.0,
                       margin: float = 10.0) -> dict[str, tuple[str, ...]]:
    """XKCD colour-survey names by nearest palette colour (CIELAB distance): kept when the
    nearest is within `max_delta_e` and `margin` closer than the second, and when the name
    names no other palette colour ("cloudy blue" is nearest to white: left out); a name
    containing a held-out word (as a substring: "aquamarine" shares word pieces with "aqua")
    is left out."""
    from matplotlib.colors import XKCD_COLORS

    from pictor.data.shapes import COLORS

    names = [n.removeprefix("xkcd:") for n in XKCD_COLORS]
    names = [n for n in names if not any(h in n for h in heldout)]
    rgb = torch.tensor([[int(XKCD_COLORS["xkcd:" + n][i:i + 2], 16) for i in (1, 3, 5)]
                        for n in names])
    palette = list(COLORS)
    dist = torch.cdist(srgb_to_lab(rgb), srgb_to_lab(torch.tensor([COLORS[c] for c in palette])))
    two = dist.topk(2, dim=1, largest=False)
    out: dict[str, list[str]] = {c: [] for c in palette}
    words = {c: (c, *COLOR_WORDS[c].train) for c in palette}
    others = {c: [w for o, ws in words.items() if o != c for w in ws] for c in palette}
    for n, (d1, d2), (k, _) in zip(names, two.values.tolist(), two.indices.tolist(), strict=True):
        if d1 <= max_delta_e and d2 - d1 >= margin and not any(w in n for w in others[palette[k]]):
            out[palette[k]].append(n)
    return {c: tuple(ws) for c, ws in out.items()}


class Featurizer:
    def __init__(self):
        self.encoder = load_text_encoder("minilm")
        self.tokenizer = self.encoder.tokenizer

    @torch.no_grad()
    def word_states(self, items: list[tuple[str, str]]) -> torch.Tensor:
        """Mean token state of `word` inside `sentence`, for each (sentence, word)."""
        out = []
        for i in range(0, len(items), 64):
            chunk = items[i:i + 64]
            emb, _ = self.encoder.encode([s for s, _ in chunk])
            for j, (sentence, word) in enumerate(chunk):
                offsets = self.tokenizer(sentence, return_offsets_mapping=True)["offset_mapping"]
                start = sentence.index(word)
                end = start + len(word)
                idx = [k for k, (a, b) in enumerate(offsets) if b > a and b > start and a < end]
                out.append(emb[j, idx].float().mean(0))
        return torch.stack(out)

    @torch.no_grad()
    def pooled(self, sentences: list[str]) -> torch.Tensor:
        emb, mask = self.encoder.encode(sentences)
        m = mask.unsqueeze(-1).float()
        return (emb.float() * m).sum(1) / m.sum(1)


def fit_and_score(x, y, xt, yt, classes: int, seed: int = 0) -> torch.Tensor:
    """Softmax regression (L2 1e-3, Adam 500 steps); per-example correctness on (xt, yt)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (xt @ w + b).argmax(1) == yt


def items_for(words: dict[str, tuple[str, ...]], contexts, fill):
    names = list(words)
    items, labels = [], []
    for c, ws in words.items():
        for w in ws:
            for ctx in contexts:
                for s in fill:
                    items.append((ctx.format(w=w, s=s), w))
                    labels.append(names.index(c))
    return items, torch.tensor(labels)


def per_word(correct: torch.Tensor, items, words) -> dict[str, float]:
    out = {}
    for ws in words.values():
        for w in ws:
            hits = [bool(c) for c, (_, iw) in zip(correct, items, strict=True) if iw == w]
            out[w] = sum(hits) / len(hits)
    return out


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(2)
    heldout_colors = {c: p.heldout for c, p in COLOR_WORDS.items()}
    heldout_set = {w for h in heldout_colors.values() for w in h}
    for c, ws in WIDER_COLOR_WORDS.items():
        assert not set(ws) & heldout_set, c
    start = time.perf_counter()
    f = Featurizer()
    rows, data = [], {}

    test_items, yt = items_for(heldout_colors, COLOR_CONTEXTS, SHAPES)
    xt = f.word_states(test_items)
    survey = survey_color_words(heldout_set)
    for name, train_words in (
            ("colour word state, v1 training words", {c: p.train for c, p in COLOR_WORDS.items()}),
            ("colour word state, + 8 more words per colour",
             {c: p.train + WIDER_COLOR_WORDS[c] for c, p in COLOR_WORDS.items()}),
            ("colour word state, XKCD survey names",
             {c: tuple(dict.fromkeys(p.train + survey[c])) for c, p in COLOR_WORDS.items()})):
        items, y = items_for(train_words, COLOR_CONTEXTS, SHAPES)
        correct = fit_and_score(f.word_states(items), y, xt, yt, len(COLOR_WORDS))
        data[name] = {"heldout_accuracy": correct.float().mean().item(),
                      "per_word": per_word(correct, test_items, heldout_colors),
                      "train_words": sum(len(v) for v in train_words.values())}

    sentences = [s for s, _ in test_items]
    items, y = items_for({c: p.train for c, p in COLOR_WORDS.items()}, COLOR_CONTEXTS, SHAPES)
    correct = fit_and_score(f.pooled([s for s, _ in items]), y, f.pooled(sentences), yt,
                            len(COLOR_WORDS))
    data["pooled sentence, v1 training words"] = {
        "heldout_accuracy": correct.float().mean().item(),
        "per_word": per_word(correct, test_items, heldout_colors), "train_words": 16}

    heldout_shapes = {s: p.heldout for s, p in SHAPE_WORDS.items()}
    items, y = items_for({s: p.train for s, p in SHAPE_WORDS.items()}, SHAPE_CONTEXTS, ("",))
    test_items, yt = items_for(heldout_shapes, SHAPE_CONTEXTS, ("",))
    correct = fit_and_score(f.word_states(items), y, f.word_states(test_items), yt,
                            len(SHAPE_WORDS))
    data["shape word state, v1 training words"] = {
        "heldout_accuracy": correct.float().mean().item(),
        "per_word": per_word(correct, test_items, heldout_shapes), "train_words": 8}

    for name, d in data.items():
        worst = sorted(d["per_word"].items(), key=lambda kv: kv[1])[:3]
        rows.append([name, d["train_words"], f"{d['heldout_accuracy']:.3f}",
                     ", ".join(f"{w} {a:.2f}" for w, a in worst)])
    seconds = time.perf_counter() - start
    write_json(NAME, {"probes": data, "seconds": seconds, "environment": environment()})
    body = ("Linear probes on the frozen MiniLM: can a held-out word of geneval-shapes-para be read\n"
            "as its canonical colour/shape from what the U-Net receives? Trained on training\n"
            "phrasings, scored on held-out words (chance: colours 0.125, shapes 0.25).\n"
            "`.venv/bin/python benchmarks/heldout_word_probe.py`\n\n"
            + markdown_table(["probe", "training words", "held-out accuracy", "worst words"], rows))
    update_markdown_section(NAME, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
