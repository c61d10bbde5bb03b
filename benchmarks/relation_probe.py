"""Does the U-Net use the relation a prompt states? Two measurements per model (docs/grounding.md).

1. Relation sensitivity of the layout prior. At a high-noise step the model's x0 prediction is
   its guess of E[x0 | prompt]; for "a red circle to the left of a blue square" the red mass
   belongs on the left. For random `position` prompts P and their mirror P' (left <-> right,
   above <-> below, so the objects trade places), over fixed noise:
       ratio = mean |x0(P) - x0(P')| / mean |x0(P) - x0("")|
   i.e. how much the relation moves the prediction, relative to how much the whole prompt does.
   A model that ignores relations scores ~0; mirroring the layout is a change of the same order
   as drawing the objects at all, so a model that follows them scores a sizeable fraction of 1.
2. Grounding of the cross-attention: TokenCompose's token loss (pictor.training.grounding) on
   training examples of `position` prompts, noised to several t: the mean (1 - share of each
   object word's attention inside its object)^2 over the 16x16 and 8x8 attention layers. 0.86
   is uniform attention; low means the words' attention lands on their objects.
3. Side accuracy of the attention: on the same examples, whether the centre of the first
   object's words' attention lies on the correct side of the second's along the relation's axis
   (the objects' true centres decide), per t. 0.5 is chance; at high noise, where x_t does not
   show the objects, only a U-Net whose attention follows the relation scores above it.

    .venv/bin/python benchmarks/relation_probe.py --model models/shapes-v10 [--model M2 ...]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from common import environment, markdown_table, update_markdown_section, write_json
from pictor.data.shapes import flip_relation, parse_prompt
from pictor.data.suites import all_prompts

NAME = "relation_probe"
PRIOR_TIMESTEPS = (999, 900)
GROUNDING_TIMESTEPS = (100, 500, 800, 900, 990)
SIDE_TIMESTEPS = (500, 900, 990)  # reported (all GROUNDING_TIMESTEPS are in the JSON)


def mirrored(prompt: str) -> str:
    """The prompt with its relation flipped: the same objects, places exchanged."""
    relation = parse_prompt(prompt).relation
    return prompt.replace(relation, flip_relation(relation))


@torch.no_grad()
def prior_sensitivity(pipe, prompts: list[str], num_seeds: int, t: int) -> float:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(num_seeds, *pipe.latent_shape, generator=gen)
    ab = float(pipe.schedule.alphas_cumprod[t])
    x_t = (1 - ab) ** 0.5 * noise  # E[x_t] at this step with the signal at its mean 0
    tt = torch.full((num_seeds,), float(t))
    den = pipe.denoiser()

    def x0(prompt: str) -> torch.Tensor:
        cond, _ = pipe.conditions(prompt, "")
        c = {k: v.expand(num_seeds, *v.shape[1:]) for k, v in cond.items()}
        return den.predict_x0_eps(x_t, tt, c)[0]

    moved, total = 0.0, 0.0
    empty = x0("")
    for p in prompts:
        a = x0(p)
        moved += float((a - x0(mirrored(p))).abs().mean())
        total += float((a - empty).abs().mean())
    return moved / total


@torch.no_grad()
def side_accuracy(records, tokens, entity, masks) -> float:
    """Share of examples whose two objects' attention centres are in the true order along the
    axis on which the objects' mask centres differ most (layers averaged)."""
    from pictor.training.grounding import pixel_coordinates

    centres_a, centres_m = [], []
    for probs in records:
        b, n, _ = probs.shape
        side = int(round(n ** 0.5))
        xy = pixel_coordinates(side, probs.device)
        m = torch.nn.functional.adaptive_avg_pool2d(masks, side).flatten(2)       # (B, E, N)
        a = probs.gather(2, tokens.clamp(min=0)[:, None, :].expand(b, n, tokens.shape[1]))
        a = a.transpose(1, 2) * (tokens >= 0)[..., None]                          # (B, P, N)
        per_entity = torch.stack([(a * (entity == e)[..., None]).sum(1) for e in (0, 1)], 1)
        centres_a.append((per_entity @ xy) / per_entity.sum(-1, keepdim=True).clamp_min(1e-12))
        centres_m.append((m[:, :2] @ xy) / m[:, :2].sum(-1, keepdim=True).clamp_min(1e-12))
    ca, cm = torch.stack(centres_a).mean(0), torch.stack(centres_m).mean(0)        # (B, 2, 2)
    dm, da = cm[:, 0] - cm[:, 1], ca[:, 0] - ca[:, 1]                              # (B, 2)
    axis = dm.abs().argmax(dim=1, keepdim=True)
    right = torch.sign(dm.gather(1, axis)) == torch.sign(da.gather(1, axis))
    return float(right.float().mean())


def grounding(pipe, data: Path, num_examples: int, seed: int = 0
              ) -> tuple[dict[int, float], dict[int, float]]:
    from pictor.data.loader import open_dataset
    from pictor.diffusion.forward import q_sample
    from pictor.text.encoders import load_tokenizer
    from pictor.training.grounding import (
        build_grounding_table,
        grounding_loss,
        record_cross_attention,
    )

    # position prompts are ~30% of the shapes mixes: 4x the examples holds enough of them
    dataset = open_dataset(data, image_size=pipe.image_size, max_images=4 * num_examples)
    rows = [i for i, c in enumerate(dataset.captions) if parse_prompt(c).relation][:num_examples]
    images = torch.stack([dataset[i]["image"] for i in rows])
    captions = [dataset.captions[i] for i in rows]
    tokenizer = load_tokenizer(pipe.config.text.spec)
    z0 = pipe.codec.encode(images).float()
    table = build_grounding_table(dataset, tokenizer, max_length=pipe.config.text.max_length,
                                  resolution=z0.shape[-1], log=lambda *_: None)
    tokens, entity, masks = table.batch(torch.tensor(rows), "cpu")
    emb, mask = zip(*(pipe.encode_prompt(c) for c in captions), strict=True)
    emb, mask = torch.cat(emb), torch.cat(mask)
    unet = pipe.unet
    gen = torch.Generator().manual_seed(seed)
    out, sides = {}, {}
    for t in GROUNDING_TIMESTEPS:
        tt = torch.full((len(rows),), t)
        x_t = q_sample(z0, tt, torch.randn(z0.shape, generator=gen), pipe.schedule.alphas_cumprod)
        with record_cross_attention(unet, 8) as records:
            unet(x_t.float(), tt.float(), emb, mask)
        out[t] = round(float(grounding_loss(records, tokens, entity, masks)), 3)
        sides[t] = round(side_accuracy(records, tokens, entity, masks), 3)
    return out, sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=Path("data/shapes-100k-v2"),
                        help="shapes-world training data for the grounding measurement "
                             "(skipped if missing)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from pictor.pipeline import load_pipeline

    prompts = random.Random(0).sample(all_prompts("position"), args.prompts)
    results, rows = {}, []
    start = time.perf_counter()
    for model in args.model:
        pipe = load_pipeline(model, compute_dtype="float32")
        r = {f"prior_sensitivity_t{t}": round(prior_sensitivity(pipe, prompts, args.seeds, t), 4)
             for t in PRIOR_TIMESTEPS}
        if args.data.exists():
            r["token_loss_by_t"], r["side_accuracy_by_t"] = grounding(pipe, args.data,
                                                                      args.examples)
        results[str(model)] = r
        rows.append([f"`{model}`", *(f"{r[f'prior_sensitivity_t{t}']:.3f}"
                                     for t in PRIOR_TIMESTEPS),
                     *(f"{r['token_loss_by_t'][t]:.2f}" if "token_loss_by_t" in r else "-"
                       for t in GROUNDING_TIMESTEPS),
                     *(f"{r['side_accuracy_by_t'][t]:.2f}" if "side_accuracy_by_t" in r else "-"
                       for t in SIDE_TIMESTEPS)])
    env = environment()
    table = markdown_table(
        ["model", *(f"relation sensitivity t={t}" for t in PRIOR_TIMESTEPS),
         *(f"token loss t={t}" for t in GROUNDING_TIMESTEPS),
         *(f"side accuracy t={t}" for t in SIDE_TIMESTEPS)], rows)
    print(table)
    if args.no_write:
        return
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    data = {"settings": settings | {"model": [str(m) for m in args.model]},
            "environment": env, "results": results,
            "elapsed_seconds": round(time.perf_counter() - start, 1)}
    path = write_json(NAME, data)
    body = (f"Relation sensitivity: mean |x0(P) - x0(P mirrored)| / mean |x0(P) - x0(\"\")| at "
            f"the given step, {args.prompts} random `position` prompts x {args.seeds} noise "
            f"seeds (0: the relation is ignored). Token loss: TokenCompose's loss of the "
            f"cross-attention on {args.examples} `position` training examples noised to t "
            f"(0.86 = uniform attention; 0 = every object word's attention on its object). "
            f"Side accuracy: on the same examples, the share whose two objects' attention "
            f"centres lie in the true order along the relation's axis (0.5 = chance). "
            f"docs/grounding.md. Written by `benchmarks/relation_probe.py` ({env['date_utc']})."
            f"\n\n" + table + f"\n\nRaw: `{path.relative_to(path.parents[2])}`.")
    update_markdown_section(NAME, body)


if __name__ == "__main__":
    main()
