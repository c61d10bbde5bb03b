"""Training: the diffusion and autoencoder trainers on one loop, EMA, checkpoints, DDP, metrics.

    loop.py          run_training: optimizer, warm-up, clipping, accumulation, EMA, checkpoints,
                     DDP, NaN stop, logging (shared by both trainers)
    trainer.py       train(TrainConfig): text-conditional diffusion (`pictor train`)
    autoencoder.py   train_autoencoder(AutoencoderTrainConfig) (`pictor train-autoencoder`)
    gan.py, vae.py   train_gan / train_vae: the other model families (`pictor train` with
                     model.family gan / vae; gan_losses.py, diffaugment.py, pixel_text.py)
    latent_space.py  pixels / pixel-unshuffle / autoencoder latents as the diffusion space
    checkpoints.py   atomic, verified checkpoints; `latest`
    distributed.py   torchrun / DDP set-up (one and several machines)
    ema.py, metrics.py

Submodules are imported explicitly (nothing here), so importing one stays light.
"""
