"""Samplers: one signature for all.

    sample(denoiser, x_T, num_steps, *, cond=None, guidance=None, generator=None, callback=None,
           **opts) -> x_0

x_T (B, ...) is standard normal noise, `cond` goes to denoiser.model untouched, `guidance` is a
CFG-like object with .apply(denoiser), `generator` a CPU torch.Generator, and
callback(step_index, num_steps, t, x_t, x0_pred) runs at every step with the sample the model just
saw and its x0 prediction. See docs/samplers.md for the diffusers / k-diffusion / A1111 names.
"""

from __future__ import annotations

from collections.abc import Callable

from pictor.samplers import ddim, ddpm, dpm_solver, euler


def _dpmpp_2m_karras(denoiser, x_T, num_steps, **kwargs):
    """DPM-Solver++(2M) on Karras sigmas (dpm_solver.sample with karras_sigmas=True)."""
    return dpm_solver.sample(denoiser, x_T, num_steps, karras_sigmas=True, **kwargs)


SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm.sample,
    "ddim": ddim.sample,
    "dpm++2m": dpm_solver.sample,
    "dpm++2m-karras": _dpmpp_2m_karras,
    "euler": euler.sample,
}

# other spellings (diffusers class names, k-diffusion function names, A1111 UI names), lower case
SAMPLER_ALIASES: dict[str, str] = {
    "ddpmscheduler": "ddpm",
    "ancestral": "ddpm",
    "ddimscheduler": "ddim",
    "dpmpp_2m": "dpm++2m",
    "sample_dpmpp_2m": "dpm++2m",
    "dpm++ 2m": "dpm++2m",
    "dpm++_2m": "dpm++2m",
    "dpmsolvermultistepscheduler": "dpm++2m",
    "dpmpp_2m_karras": "dpm++2m-karras",
    "dpm++ 2m karras": "dpm++2m-karras",
    "dpm++_2m_karras": "dpm++2m-karras",
    "k_euler": "euler",
    "sample_euler": "euler",
    "eulerdiscretescheduler": "euler",
}


def get_sampler(name: str) -> Callable:
    """The sampler called `name` (canonical or alias, case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} "
            f"(aliases: {sorted(SAMPLER_ALIASES)})"
        )
    return SAMPLERS[key]


__all__ = ["SAMPLERS", "SAMPLER_ALIASES", "get_sampler"]
