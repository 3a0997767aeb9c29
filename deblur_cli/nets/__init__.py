"""The networks: MSDN (the paper's), DeblurGAN's generator, and the architecture field that picks one."""
