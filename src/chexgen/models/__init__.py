"""chexgen.models: presets, text encoders, the radiograph VAE and the diffusion transformer.

Import the submodules directly (``from chexgen.models.dit import ChexGenDiT``);
this package stays light so ``import chexgen.models.presets`` needs no torch.
"""
