"""The model families beside diffusion at sampling time: a GAN or VAE model folder loads into a
`FamilyPipeline` with the same `generate(prompt, num_images=, seed=)` as the diffusion
`Pipeline`, and `load_model(DIR)` returns whichever the folder's `model.family` names
(pictor.families.pipeline). Training lives in pictor.training.gan and pictor.training.vae,
the networks in pictor.networks.gan and pictor.networks.cvae; docs/families.md compares them.
"""
