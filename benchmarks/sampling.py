"""Sampling speed of the tiny preset on CPU, and the ratio against diffusers' PixArtAlphaPipeline.

What it measures (one run, same machine, same random weights):

1. images/s of ``ChexGenPipeline`` (tiny preset, 128 px, CFG 4.0: sampling loop + VAE
   decode, timed separately and added) for DDIM-100, IDDPM-100 and DPM-Solver++-20;
2. for DDIM-100 and DPM-Solver++-20, latents/s of chexgen's sampling loop vs
   ``diffusers.PixArtAlphaPipeline`` running the SAME ``PixArtTransformer2DModel``
   (chexgen's ``transformer.backbone``) with the same scheduler, guidance, per-image
   generators and prompt embeddings passed directly (``prompt_embeds`` + masks; no T5),
   ``output_type="latent"`` so only the denoising loop is compared. The max abs latent
   difference between the two is printed as a parity check. IDDPM is not compared:
   diffusers' PixArt pipeline drops the learned variance.

Prompt encoding (MiniLM) is done once, outside the timings. The weights are random
with the zero-initialised layers perturbed, so every layer does real work.

    python benchmarks/sampling.py                       # 1 image: ~3-6 min on 2 busy CPU cores
    python benchmarks/sampling.py --num-images 8 --batch-size 4 --repeats 2 --threads 8
"""

from __future__ import annotations

import argparse
import time

import torch


def _perturb(module: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="Preset to benchmark (random weights).")
    ap.add_argument("--num-images", type=int, default=1, help="Images per measurement.")
    ap.add_argument("--batch-size", type=int, default=1, help="Images per forward pass (CFG doubles it).")
    ap.add_argument("--guidance", type=float, default=4.0, help="Classifier-free guidance scale.")
    ap.add_argument("--samplers", default="ddim:100,iddpm:100,dpmsolver++:20",
                    help="Comma-separated sampler:steps list.")
    ap.add_argument("--no-diffusers", action="store_true", help="Skip the PixArtAlphaPipeline comparison.")
    ap.add_argument("--repeats", type=int, default=1, help="Repeat each timing and keep the best.")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    ap.add_argument("--device", default="cpu", help="torch device.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import PixArtAlphaPipeline

    from chexgen.diffusion.samplers import make_generators, make_scheduler
    from chexgen.pipelines import ChexGenPipeline

    pipe = ChexGenPipeline.from_preset(args.preset, seed=0)
    _perturb(pipe.transformer)
    pipe.to(args.device)
    n, bs = args.num_images, args.batch_size
    prompts = [f"small left pleural effusion, case {i}" for i in range(n)]
    cond = pipe.encode_prompts(prompts)
    seeds = list(range(n))
    res = pipe.config.resolution
    print(f"preset {args.preset}: {res} px, DiT {sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.1f}M "
          f"params, {n} images, batch {bs}, guidance {args.guidance}, device {args.device}, "
          f"threads {torch.get_num_threads()}")

    def chexgen_latents(sampler, steps):
        return torch.cat([
            pipe.sample_latents(cond[i:i + bs], make_generators(seeds[i:i + bs]), sampler=sampler,
                                num_inference_steps=steps, guidance_scale=args.guidance)
            for i in range(0, n, bs)
        ])

    ref = None
    if not args.no_diffusers:
        ref = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae.autoencoder,
                                  transformer=pipe.transformer.backbone, scheduler=make_scheduler("ddim"))
        ref.set_progress_bar_config(disable=True)
        null = pipe.transformer.null_caption.detach()

    def diffusers_latents(sampler, steps):
        ref.scheduler = make_scheduler(sampler)
        outs = []
        for i in range(0, n, bs):
            c = cond[i:i + bs]
            b = len(c)
            outs.append(ref(
                prompt=None, negative_prompt=None, prompt_embeds=c.embeddings, prompt_attention_mask=c.mask,
                negative_prompt_embeds=null.unsqueeze(0).expand(b, -1, -1),
                negative_prompt_attention_mask=torch.ones_like(c.mask),
                num_inference_steps=steps, guidance_scale=args.guidance, height=res, width=res,
                generator=make_generators(seeds[i:i + bs]), output_type="latent", use_resolution_binning=False,
            ).images)
        return torch.cat(outs)

    # warm-up (allocations, lazy imports)
    chexgen_latents("ddim", 2)
    if ref is not None:
        diffusers_latents("ddim", 2)

    latents_probe = chexgen_latents("ddim", 1)
    with torch.no_grad():
        t_decode, _ = _timed(lambda: pipe.vae.decode(latents_probe), args.repeats)

    print(f"{'sampler':<16}{'chexgen img/s':>14}{'s/img':>8}", end="")
    print(f"{'diffusers latent/s':>20}{'chexgen latent/s':>18}{'ratio':>7}{'max|dz|':>10}" if ref else "")
    for item in args.samplers.split(","):
        sampler, steps = item.split(":")
        steps = int(steps)
        compare = ref is not None and sampler in ("ddim", "dpmsolver++")
        t_ours = t_ref = float("inf")
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            t, z_ours = _timed(lambda: chexgen_latents(sampler, steps), 1)
            t_ours = min(t_ours, t)
            if compare:
                t, z_ref = _timed(lambda: diffusers_latents(sampler, steps), 1)
                t_ref = min(t_ref, t)
        t_img = t_ours + t_decode  # full pipeline = sampling loop + VAE decode
        line = f"{sampler + '-' + str(steps):<16}{n / t_img:>14.3f}{t_img / n:>8.2f}"
        if compare:
            diff = (z_ours.float().cpu() - z_ref.float().cpu()).abs().max().item()
            line += f"{n / t_ref:>20.3f}{n / t_ours:>18.3f}{t_ref / t_ours:>7.2f}{diff:>10.2e}"
        print(line, flush=True)
    print("ratio = diffusers time / chexgen time for the same denoising loop (>1: chexgen faster).")


if __name__ == "__main__":
    main()
