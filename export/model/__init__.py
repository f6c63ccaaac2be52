"""The network: the U-Net, checkpoints, diffusers conversion and the sources an export reads."""
