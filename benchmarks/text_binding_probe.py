"""Does the text encoder hand the U-Net the binding of colours to shapes? A linear probe.

Every `color_attr` prompt of the shapes world ("a red circle and a blue square", all 8 x 7 colour
pairs x 4 x 3 shape pairs = 672 prompts) is encoded with the frozen text encoder, exactly as
training does. Three linear probes (softmax regression, trained on 70% of the prompts, scored on
the held-out 30%, whose colour/shape combinations in that order were never seen):

- shape token -> the colour bound to it (8 classes, chance 12.5%): can a cross-attention head that
  attends to the word "circle" read "red" from its value?
- colour token -> the shape bound to it (4 classes, chance 25%);
- the same two probes on the encoder's input embeddings (word + position, before any attention
  layer): the control, near chance because there the word "circle" has not yet looked at its
  neighbours (only its position leaks a little: "cyan" is two word pieces and "an" precedes
  "orange", which shifts the shape word).

High accuracy on the output means the binding is in the text embeddings and a failure to bind
colours in the images is the denoiser's (or its training budget's), not the encoder's.

The same for relations, on every `position` prompt with two different shapes ("a red circle to
the left of a blue square"): shape token -> the side of the image its object belongs on (left,
right, top, bottom; 4 classes, chance 25%). The word "left" alone does not say it: the first
object goes left, the second right. The token must know both the relation and its own role.

    .venv/bin/python benchmarks/text_binding_probe.py          # ~30 s, writes JSON + BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from common import environment, markdown_table, update_markdown_section, write_json
from pictor.data.shapes import COLORS, SHAPES, parse_prompt
from pictor.data.suites import all_prompts
from pictor.text.encoders import load_text_encoder

NAME = "text_binding_probe"


def prompts() -> list[tuple[str, str, str, str, str]]:
    """(prompt, colour1, shape1, colour2, shape2) for every color_attr prompt."""
    rows = []
    for prompt in all_prompts("color_attr"):
        first, second = parse_prompt(prompt).objects
        rows.append((prompt, first.color, first.shape, second.color, second.shape))
    return rows


# side of the image each object of `A relation B` belongs on
SIDES = ("left", "right", "top", "bottom")
_SIDES_OF = {"to the left of": ("left", "right"), "to the right of": ("right", "left"),
             "above": ("top", "bottom"), "below": ("bottom", "top")}


def position_prompts() -> list[tuple[str, str, str, str, str]]:
    """(prompt, shape1, side1, shape2, side2) for the position prompts with two different shapes
    (so that each shape word occurs once)."""
    rows = []
    for prompt in all_prompts("position"):
        parsed = parse_prompt(prompt)
        first, second = parsed.objects
        if first.shape != second.shape:
            side1, side2 = _SIDES_OF[parsed.relation]
            rows.append((prompt, first.shape, side1, second.shape, side2))
    return rows


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, num_classes: int,
          seed: int = 0) -> float:
    """Held-out accuracy of an L2-regularised softmax regression on standardised features."""
    torch.manual_seed(seed)
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]) + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((x[~train] @ w + b).argmax(1) == y[~train]).float().mean())


def encode(tokenizer, model, texts: list[str]) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """Each text's word pieces, and the (B, L, D) hidden states per layer probed."""
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**tokens, output_hidden_states=True)
    words = [tokenizer.convert_ids_to_tokens(ids) for ids in tokens["input_ids"]]
    return words, {"output (what the U-Net reads)": out.last_hidden_state,
                   "input embeddings (control)": out.hidden_states[0]}


def probe_tokens(layers: dict[str, torch.Tensor], ids: list[tuple[int, int, int]],
                 num_train: int, num_classes: int, **labels: str) -> list[dict]:
    """One result per layer: probe the token (prompt k, position j) -> label, trained on the
    tokens of prompts k < num_train."""
    y = torch.tensor([label for _, _, label in ids])
    train = torch.tensor([k < num_train for k, _, _ in ids])
    results = []
    for layer_name, hidden in layers.items():
        x = torch.stack([hidden[k, j] for k, j, _ in ids]).float()
        results.append({"layer": layer_name, **labels,
                        "accuracy": probe(x, y, train, num_classes), "chance": 1 / num_classes})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="minilm", help="text encoder spec (default minilm)")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    args = parser.parse_args()

    start = time.perf_counter()
    encoder = load_text_encoder(args.encoder)
    tokenizer, model = encoder.tokenizer, encoder.model
    colours, shapes = list(COLORS), list(SHAPES)
    results = []

    rows = prompts()
    random.Random(0).shuffle(rows)
    words, layers = encode(tokenizer, model, [r[0] for r in rows])
    index: dict[str, list[tuple[int, int, int]]] = {"shape": [], "colour": []}
    for k, (_, c1, s1, c2, s2) in enumerate(rows):
        for colour, shape in ((c1, s1), (c2, s2)):
            # the two shapes differ, so each shape word occurs once; its colour's (last) word
            # piece comes right before it ("cyan" is "cy ##an")
            j = words[k].index(shape)
            index["shape"].append((k, j, colours.index(colour)))
            index["colour"].append((k, j - 1, shapes.index(shape)))
    num_prompts = len(rows)
    num_train = int(args.train_fraction * num_prompts)
    for token, target, num_classes in (("shape", "its colour", len(colours)),
                                       ("colour", "its shape", len(shapes))):
        results += probe_tokens(layers, index[token], num_train, num_classes, token=token,
                                target=target, prompts="color_attr")
    results.sort(key=lambda r: list(layers).index(r["layer"]))  # by layer, then token (stable)

    rows = position_prompts()
    random.Random(0).shuffle(rows)
    words, layers = encode(tokenizer, model, [r[0] for r in rows])
    ids = []
    for k, (_, s1, side1, s2, side2) in enumerate(rows):
        ids += [(k, words[k].index(s1), SIDES.index(side1)),
                (k, words[k].index(s2), SIDES.index(side2))]
    results += probe_tokens(layers, ids, int(args.train_fraction * len(rows)), len(SIDES),
                            token="shape", target="its side", prompts="position")
    data = {"encoder": args.encoder, "num_prompts": {"color_attr": num_prompts,
                                                     "position": len(rows)}, "train_fraction":
            args.train_fraction, "results": results, "seconds": time.perf_counter() - start,
            "environment": environment()}
    path = write_json(NAME, data)
    rows_md = [[f"`{r['prompts']}`", r["layer"], f"{r['token']} token -> {r['target']}",
                f"{r['accuracy']:.3f}", f"{r['chance']:.3f}"] for r in results]
    body = ("## Text encoder binding probe (`benchmarks/text_binding_probe.py`)\n\n"
            f"Linear probes on {args.encoder} token embeddings of all {num_prompts} `color_attr` "
            f"prompts and the {len(rows)} `position` prompts with two different shapes "
            f"(side: where the shape's object belongs, left/right/top/bottom), held-out accuracy "
            f"({int(100 * (1 - args.train_fraction))}% of the prompts unseen by the probe):\n\n"
            + markdown_table(["prompts", "embedding", "probe", "accuracy", "chance"], rows_md)
            + f"\n\nRaw: `{path.relative_to(path.parents[2])}`.")
    update_markdown_section(NAME, body)
    for r in results:
        print(f"{r['prompts']:10s} {r['layer']:32s} {r['token']:6s} -> {r['target']:10s} "
              f"{r['accuracy']:.3f} "
              f"(chance {r['chance']:.3f})")


if __name__ == "__main__":
    main()
